//! Deterministic randomness of a run: the data order, the augmented views of the feature cache
//! and each sample's random stream, all derived from `(seed, position)` so a resumed run takes
//! exactly the path of an uninterrupted one.

use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::prompt::UnitBox;

use super::data::{self, Augment, TrainImage};

/// Image indices for the global sample positions `from..from + n` (epoch permutations from seed).
pub fn sample_order(seed: u64, n_images: usize, from: usize, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut cur_epoch = usize::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for g in from..from + n {
        let e = g / n_images;
        if e != cur_epoch {
            perm = (0..n_images).collect();
            perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ (0x5EED_0000 + e as u64),
            ));
            cur_epoch = e;
        }
        out.push(perm[g % n_images]);
    }
    out
}

/// `views` views of every image for the frozen encoder's feature cache, at index k · views + v
/// for image k (`images[0]` is image `first` of the training set): view 0 is the image as is, the
/// others are augmented with `aug` (deterministic given `seed` and k). Returns the normalised
/// pixels of each view and its regions' boxes (`None`: moved out).
pub fn augmented_views(
    images: &[TrainImage],
    first: usize,
    views: usize,
    aug: &Augment,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<Vec<Option<UnitBox>>>) {
    let mut px = Vec::with_capacity(images.len() * views);
    let mut boxes_out = Vec::with_capacity(images.len() * views);
    for (k, im) in (first..).zip(images) {
        let boxes: Vec<UnitBox> = im.regions.iter().map(|r| r.unit).collect();
        for v in 0..views {
            if v == 0 {
                px.push(crate::model::image::normalize(im.square.as_raw()));
                boxes_out.push(boxes.iter().map(|&b| Some(b)).collect());
            } else {
                let mut rng = sample_rng(seed ^ VIEW_SALT, k * views + v);
                let (p, moved) = data::augment(&im.square, &boxes, aug, &mut rng);
                px.push(p);
                boxes_out.push(moved);
            }
        }
    }
    (px, boxes_out)
}

/// Salt of the random streams of cached augmented views.
pub(crate) const VIEW_SALT: u64 = 0x0076_1E35;

pub(crate) fn sample_rng(seed: u64, g: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::manifest::fnv64(seed, &(g as u64).to_le_bytes()))
}
