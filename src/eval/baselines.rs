//! Baselines `eval` reports beside the model: two lookup tables learned from the training
//! manifest — the mean box per finding ("class prior") and per finding + side + zone words of
//! the phrase ("phrase prior") — and, for retrieval, 32×32 raw-pixel thumbnails compared by cosine.

use std::collections::HashMap;

use image::GrayImage;

/// A box normalised by image width/height.
pub type NormBox = [f64; 4];

/// Side and zone words of a phrase ("left lower zone effusion" → ("left", "lower")).
pub fn side_zone(phrase: &str) -> (String, String) {
    let p = phrase.to_lowercase();
    let words: Vec<&str> = p.split(|c: char| !c.is_alphanumeric()).collect();
    let side = ["left", "right", "bilateral"]
        .iter()
        .find(|s| words.contains(s))
        .map_or("", |s| s)
        .to_string();
    let zone = ["upper", "middle", "lower", "apical", "basal"]
        .iter()
        .find(|s| words.contains(s))
        .map_or("", |s| s)
        .to_string();
    (side, zone)
}

#[derive(Default)]
struct Mean {
    sum: [f64; 4],
    n: usize,
}

impl Mean {
    fn add(&mut self, b: NormBox) {
        for (s, v) in self.sum.iter_mut().zip(b) {
            *s += v;
        }
        self.n += 1;
    }
    fn get(&self) -> Option<NormBox> {
        (self.n > 0).then(|| {
            let n = self.n as f64;
            [
                self.sum[0] / n,
                self.sum[1] / n,
                self.sum[2] / n,
                self.sum[3] / n,
            ]
        })
    }
}

/// The two lookup tables.
#[derive(Default)]
pub struct Priors {
    class: HashMap<String, Mean>,
    phrase: HashMap<(String, String, String), Mean>,
}

impl Priors {
    /// Add one training region (finding, phrase, box normalised by its image size).
    pub fn add(&mut self, finding: &str, phrase: &str, b: NormBox) {
        self.class.entry(finding.to_string()).or_default().add(b);
        let (s, z) = side_zone(phrase);
        self.phrase
            .entry((finding.to_string(), s, z))
            .or_default()
            .add(b);
    }

    /// Mean box of the finding.
    pub fn class_prior(&self, finding: &str) -> Option<NormBox> {
        self.class.get(finding).and_then(Mean::get)
    }

    /// Mean box of finding + side + zone of the phrase; falls back to the class prior for
    /// combinations unseen in training (and for phrases without location words).
    pub fn phrase_prior(&self, finding: &str, phrase: &str) -> Option<NormBox> {
        let (s, z) = side_zone(phrase);
        self.phrase
            .get(&(finding.to_string(), s, z))
            .and_then(Mean::get)
            .or_else(|| self.class_prior(finding))
    }
}

/// Normalised 32×32 thumbnail vector (mean removed, unit length) for the raw-pixel baseline.
pub fn thumbnail_vector(img: &GrayImage) -> Vec<f32> {
    let t = image::imageops::resize(img, 32, 32, image::imageops::FilterType::Triangle);
    let v: Vec<f32> = t.as_raw().iter().map(|p| *p as f32).collect();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let v: Vec<f32> = v.iter().map(|x| x - mean).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_zone_words() {
        assert_eq!(
            side_zone("right middle zone atelectasis"),
            ("right".into(), "middle".into())
        );
        assert_eq!(
            side_zone("Left pleural effusion"),
            ("left".into(), "".into())
        );
        assert_eq!(side_zone("cardiomegaly"), ("".into(), "".into()));
    }

    #[test]
    fn priors_average_and_fall_back() {
        let mut p = Priors::default();
        p.add("Effusion", "left pleural effusion", [0.6, 0.6, 0.8, 0.8]);
        p.add("Effusion", "left pleural effusion", [0.6, 0.7, 0.8, 0.9]);
        p.add("Effusion", "right pleural effusion", [0.1, 0.6, 0.3, 0.8]);
        let c = p.class_prior("Effusion").unwrap();
        assert!((c[0] - (0.6 + 0.6 + 0.1) / 3.0).abs() < 1e-12);
        let l = p.phrase_prior("Effusion", "left pleural effusion").unwrap();
        assert!((l[1] - 0.65).abs() < 1e-12);
        // no location words → class prior
        assert_eq!(
            p.phrase_prior("Effusion", "pleural effusion"),
            p.class_prior("Effusion")
        );
        assert!(p.class_prior("Mass").is_none());
    }
}
