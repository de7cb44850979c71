//! The chat template, the task instructions and the box text format `[[x1,y1,x2,y2]]`.
//!
//! ```text
//! <bos><start_of_turn>user\n{placeholder × M}\n{INSTRUCTION}\n<end_of_turn>\n<start_of_turn>model\n{RESPONSE}\n<end_of_turn>\n
//! ```
//! Text between special tokens is tokenised piece by piece, which gives the same ids as
//! tokenising the whole string (special tokens always split the text) and tells us where the
//! image placeholders and the supervised response sit.

use super::tokenizer::LofiTokenizer;
use super::ModelError;

/// A box in letterboxed model space, each coordinate in [0, 1].
pub type UnitBox = [f32; 4];

/// A box as the model writes it: integers 0–1000.
pub type TextBox = [u32; 4];

/// What the decoder is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    /// Phrase grounding: text → boxes.
    Ground(String),
    /// Dense / grounded captioning: boxes → text.
    Describe(Vec<UnitBox>),
    /// Report captioning.
    Caption,
}

impl Instruction {
    /// The instruction text of the template.
    pub fn text(&self) -> String {
        match self {
            Self::Ground(p) => {
                let p = p.trim().trim_end_matches('.').trim();
                format!("Detect all instances of \"{p}\".")
            }
            Self::Describe(b) => format!("Describe the regions: {}", format_boxes(b)),
            Self::Caption => "Describe the findings of the chest X-ray.".to_string(),
        }
    }
}

/// The response text for grounding.
pub fn ground_response(boxes: &[UnitBox]) -> String {
    format!("```\n{}\n```", format_boxes(boxes))
}

/// `int` coordinate of the text format (rounded to the nearest 1/1000).
pub fn to_text_coord(v: f32) -> u32 {
    (v.clamp(0.0, 1.0) * 1000.0).round() as u32
}

/// Boxes sorted by x1, written `[[a,b,c,d],[…]]` with no spaces.
pub fn format_boxes(boxes: &[UnitBox]) -> String {
    let mut b: Vec<TextBox> = boxes
        .iter()
        .map(|b| {
            [
                to_text_coord(b[0]),
                to_text_coord(b[1]),
                to_text_coord(b[2]),
                to_text_coord(b[3]),
            ]
        })
        .collect();
    b.sort_by_key(|b| (b[0], b[1], b[2], b[3]));
    let inner: Vec<String> = b
        .iter()
        .map(|b| format!("[{},{},{},{}]", b[0], b[1], b[2], b[3]))
        .collect();
    format!("[{}]", inner.join(","))
}

/// A box found in model output, with the byte range of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBox {
    /// Coordinates in [0, 1].
    pub unit: UnitBox,
    /// Byte range in the parsed text.
    pub span: std::ops::Range<usize>,
}

/// Every well-formed `[a,b,c,d]` group (integers 0–1000, x2 > x1, y2 > y1) in `text`, in order.
/// Whitespace is allowed anywhere; anything else is skipped. Never panics.
pub fn parse_boxes(text: &str) -> Vec<ParsedBox> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'[' {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + 1;
        let mut nums: Vec<u32> = Vec::with_capacity(4);
        let mut ok = false;
        loop {
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            let ds = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() && j - ds < 6 {
                j += 1;
            }
            if j == ds {
                break;
            }
            let Ok(v) = text[ds..j].parse::<u32>() else {
                break;
            };
            nums.push(v);
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            if j >= bytes.len() {
                break;
            }
            if nums.len() == 4 {
                ok = bytes[j] == b']';
                break;
            }
            if bytes[j] != b',' {
                break;
            }
            j += 1;
        }
        if ok {
            let [x1, y1, x2, y2] = [nums[0], nums[1], nums[2], nums[3]];
            if x2 > x1 && y2 > y1 && x2 <= 1000 && y2 <= 1000 {
                out.push(ParsedBox {
                    unit: [
                        x1 as f32 / 1000.0,
                        y1 as f32 / 1000.0,
                        x2 as f32 / 1000.0,
                        y2 as f32 / 1000.0,
                    ],
                    span: start..j + 1,
                });
            }
            i = j + 1;
        } else {
            i = start + 1;
        }
    }
    out
}

/// One user turn (image + instruction) and, for solved examples and training, the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The instruction.
    pub instruction: Instruction,
    /// The model's answer; `None` for the turn to be answered.
    pub response: Option<String>,
    /// Whether the answer is supervised (training) or only context (in-context examples).
    pub supervised: bool,
}

/// A tokenised prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Start of each turn's image placeholder run (M tokens each), in turn order.
    pub image_starts: Vec<usize>,
    /// `targets[t] = true` when token `t` is supervised (predicted from position `t − 1`).
    pub targets: Vec<bool>,
}

/// Build the template for `turns`, each with `m` image placeholders. A final turn without a
/// response ends with `<start_of_turn>model\n`, ready for generation.
pub fn build_prompt(tok: &LofiTokenizer, turns: &[Turn], m: usize) -> Result<Prompt, ModelError> {
    let mut p = Prompt {
        ids: vec![tok.bos],
        image_starts: Vec::new(),
        targets: vec![false],
    };
    let push = |p: &mut Prompt, ids: &[u32], sup: bool| {
        p.ids.extend_from_slice(ids);
        p.targets.extend(std::iter::repeat_n(sup, ids.len()));
    };
    for turn in turns {
        push(&mut p, &[tok.start_of_turn], false);
        push(&mut p, &tok.encode("user\n")?, false);
        p.image_starts.push(p.ids.len());
        push(&mut p, &vec![tok.image; m], false);
        push(
            &mut p,
            &tok.encode(&format!("\n{}\n", turn.instruction.text()))?,
            false,
        );
        push(&mut p, &[tok.end_of_turn], false);
        push(&mut p, &tok.encode("\n")?, false);
        push(&mut p, &[tok.start_of_turn], false);
        push(&mut p, &tok.encode("model\n")?, false);
        if let Some(r) = &turn.response {
            push(&mut p, &tok.encode(&format!("{r}\n"))?, turn.supervised);
            push(&mut p, &[tok.end_of_turn], turn.supervised);
            push(&mut p, &tok.encode("\n")?, false);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_sorts_and_has_no_spaces() {
        let s = format_boxes(&[[0.6, 0.33, 0.88, 0.7], [0.12, 0.34, 0.41, 0.72]]);
        assert_eq!(s, "[[120,340,410,720],[600,330,880,700]]");
    }

    #[test]
    fn parse_roundtrip_and_spaces() {
        let b = parse_boxes("```\n[ [120, 340,410 ,720],[600,330,880,700] ]\n```");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].unit, [0.12, 0.34, 0.41, 0.72]);
        assert_eq!(b[1].unit, [0.6, 0.33, 0.88, 0.7]);
    }

    #[test]
    fn parse_garbage_gives_nothing() {
        for g in [
            "",
            "[[",
            "]]]]",
            "[[1,2,3]]",
            "[[5,5,5,5]]",
            "[[10,20,5,30]]",
            "[[1,2,3,4,5]]",
            "[[99999999999999999,1,2,3]]",
            "[[1,2,3,1001]]",
            "no boxes here",
            "[[-1,2,3,4]]",
            "[[1.5,2,3,4]]",
            "\u{1F600}[[1,2,\u{1F600}3,4]]",
        ] {
            assert!(parse_boxes(g).is_empty(), "{g:?}");
        }
    }

    #[test]
    fn parse_keeps_good_box_beside_bad() {
        let b = parse_boxes("[[1,2,3],[10,20,30,40]]");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].unit, [0.01, 0.02, 0.03, 0.04]);
    }

    #[test]
    fn instruction_texts() {
        assert_eq!(
            Instruction::Ground("left pleural effusion.".into()).text(),
            "Detect all instances of \"left pleural effusion\"."
        );
        assert_eq!(
            Instruction::Describe(vec![[0.1, 0.2, 0.3, 0.4]]).text(),
            "Describe the regions: [[100,200,300,400]]"
        );
    }
}
