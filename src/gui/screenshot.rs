//! Screenshot mode as an explicit state machine: wait for the image (and the model and store
//! when asked to use them), ask what the command line asked for — once — wait for the answers,
//! let the frame settle, save the screenshot, close. Observing the app has no side effects;
//! only [`ScreenshotRun::step`] decides what to start, and it returns commands.

use std::path::PathBuf;

use super::command::AppCommand;
use super::state::AppState;

/// What a screenshot run shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScreenshotPlan {
    /// Where the PNG goes.
    pub path: PathBuf,
    /// Ground this phrase first.
    pub phrase: Option<String>,
    /// With this many in-context cases.
    pub shots: Option<usize>,
    /// Run "Similar to this image" first.
    pub similar: bool,
    /// Run "Find all" first.
    pub find_all: bool,
    /// Open the PACS window and search the session's node.
    pub pacs_find: bool,
    /// Then retrieve this study and show it.
    pub pacs_retrieve: Option<String>,
}

/// Stages of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the image (and model and store when needed).
    Loading,
    /// Questions asked; waiting for the answers.
    Asking,
    /// A PACS retrieve was asked for; waiting for the study to arrive and open.
    Retrieving,
    /// Everything arrived; counting frames so the layout settles.
    Settling(u32),
    /// The screenshot was requested.
    Requested,
}

/// What the run needs to know about the app, read without changing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// The first pane shows an image.
    pub image_shown: bool,
    /// There is nothing to show: a load failed, or nothing was found.
    pub image_failed: bool,
    /// A model is loaded.
    pub model_ready: bool,
    /// The model failed to load.
    pub model_failed: bool,
    /// The store is open.
    pub store_ready: bool,
    /// An AI job is running.
    pub ai_busy: bool,
    /// The AI has answered the plan's phrase (or "find all"), or reported an error.
    pub ai_answered: bool,
    /// A similar-cases search is running.
    pub similar_busy: bool,
    /// The similar-cases search has hits or a message.
    pub similar_answered: bool,
    /// A PACS search or retrieve is running.
    pub pacs_busy: bool,
    /// The PACS search answered (rows or a message).
    pub pacs_answered: bool,
    /// A retrieve ended (studies or a message).
    pub pacs_retrieved: bool,
}

impl Observation {
    /// Read the app.
    pub fn of(state: &AppState, plan: &ScreenshotPlan) -> Self {
        let vp = &state.viewports[0];
        let answered = state.current_results().is_some_and(|r| {
            r.findings.iter().any(|f| match plan.phrase.as_deref() {
                Some(p) => f.phrase == p.trim(),
                None => plan.find_all && f.source == crate::report::Source::FindAll,
            })
        });
        Self {
            image_shown: vp.image.is_some(),
            image_failed: vp.error.is_some()
                || (!vp.loading && vp.path.is_none() && state.progress.is_empty()),
            model_ready: state.ai.model.is_some(),
            model_failed: state.ai.model_status.starts_with("model not loaded"),
            store_ready: state.ai.store.is_some(),
            ai_busy: state.ai.running.is_some(),
            ai_answered: answered || state.ai.message.is_some(),
            similar_busy: state.similar.searching.is_some(),
            similar_answered: !state.similar.hits.is_empty() || state.similar.message.is_some(),
            pacs_busy: state.pacs.searching.is_some() || state.pacs.retrieving.is_some(),
            pacs_answered: state.pacs.answered.is_some() || state.pacs.message.is_some(),
            pacs_retrieved: !state.pacs.retrieved.is_empty()
                || state.pacs.message.as_ref().is_some_and(|m| m.error),
        }
    }
}

/// A screenshot run.
#[derive(Debug, Clone)]
pub struct ScreenshotRun {
    /// What to show.
    pub plan: ScreenshotPlan,
    /// Where it is.
    pub stage: Stage,
    /// When it started.
    pub started: std::time::Instant,
}

/// Frames to wait after everything arrived, so panels reach their final layout.
pub const SETTLE_FRAMES: u32 = 5;

impl ScreenshotRun {
    /// A run of `plan`.
    pub fn new(plan: ScreenshotPlan) -> Self {
        Self {
            plan,
            stage: Stage::Loading,
            started: std::time::Instant::now(),
        }
    }

    /// Advance on what was observed this frame; returns the commands to run and whether the
    /// screenshot should be requested now.
    pub fn step(&mut self, o: &Observation) -> (Vec<AppCommand>, bool) {
        let p = &self.plan;
        let asks_ai = p.phrase.is_some() || p.find_all;
        let needs_model = asks_ai || p.similar;
        let needs_store = p.similar || p.shots.is_some();
        let mut cmds = Vec::new();
        if p.pacs_find {
            return self.pacs_step(o);
        }
        match self.stage {
            Stage::Loading if o.image_failed => self.stage = Stage::Settling(0),
            Stage::Loading if o.image_shown && needs_model && o.model_failed => {
                self.stage = Stage::Settling(0)
            }
            Stage::Loading
                if o.image_shown
                    && (!needs_model || o.model_ready)
                    && (!needs_store || o.store_ready) =>
            {
                if p.similar {
                    cmds.push(AppCommand::SimilarByImage);
                }
                if let Some(phrase) = &p.phrase {
                    cmds.push(AppCommand::SetActive(0));
                    cmds.push(AppCommand::Ground(phrase.clone()));
                } else if p.find_all {
                    cmds.push(AppCommand::SetActive(0));
                    cmds.push(AppCommand::FindAll);
                }
                self.stage = if cmds.is_empty() {
                    Stage::Settling(0)
                } else {
                    Stage::Asking
                };
            }
            Stage::Asking => {
                let ai_done = !asks_ai || (!o.ai_busy && o.ai_answered);
                let similar_done = !p.similar || (!o.similar_busy && o.similar_answered);
                if ai_done && similar_done {
                    self.stage = Stage::Settling(0);
                }
            }
            Stage::Settling(_) => return (cmds, self.settle()),
            _ => {}
        }
        (cmds, false)
    }
}

impl ScreenshotRun {
    /// The PACS run: open the window, search, optionally retrieve and wait for the image.
    fn pacs_step(&mut self, o: &Observation) -> (Vec<AppCommand>, bool) {
        let mut cmds = Vec::new();
        match self.stage {
            Stage::Loading => {
                cmds.push(AppCommand::ShowPacs(true));
                cmds.push(AppCommand::PacsSearch(crate::pacs::Query::default()));
                self.stage = Stage::Asking;
            }
            Stage::Asking if !o.pacs_busy && o.pacs_answered => match &self.plan.pacs_retrieve {
                Some(uid) => {
                    cmds.push(AppCommand::PacsRetrieve {
                        study_uid: uid.clone(),
                        series_uid: None,
                        label: uid.clone(),
                    });
                    self.stage = Stage::Retrieving;
                }
                None => self.stage = Stage::Settling(0),
            },
            Stage::Retrieving
                if !o.pacs_busy && o.pacs_retrieved && (o.image_shown || o.image_failed) =>
            {
                self.stage = Stage::Settling(0)
            }
            Stage::Settling(_) => return (cmds, self.settle()),
            _ => {}
        }
        (cmds, false)
    }

    /// Count a settling frame; true when the screenshot is to be requested now.
    fn settle(&mut self) -> bool {
        match self.stage {
            Stage::Settling(n) if n + 1 >= SETTLE_FRAMES => {
                self.stage = Stage::Requested;
                true
            }
            Stage::Settling(n) => {
                self.stage = Stage::Settling(n + 1);
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ScreenshotPlan {
        ScreenshotPlan {
            path: "x.png".into(),
            phrase: Some("cardiomegaly".into()),
            shots: None,
            similar: false,
            find_all: false,
            pacs_find: false,
            pacs_retrieve: None,
        }
    }

    #[test]
    fn grounding_starts_once_and_only_when_image_and_model_are_there() {
        let mut run = ScreenshotRun::new(plan());
        let waiting = Observation {
            image_shown: true,
            ..Default::default()
        };
        // observing while the model loads starts nothing, however often
        for _ in 0..10 {
            assert_eq!(run.step(&waiting), (vec![], false));
        }
        let ready = Observation {
            model_ready: true,
            ..waiting
        };
        let (cmds, shoot) = run.step(&ready);
        assert_eq!(
            cmds,
            vec![
                AppCommand::SetActive(0),
                AppCommand::Ground("cardiomegaly".into())
            ]
        );
        assert!(!shoot);
        // asked once: while busy, nothing more
        let busy = Observation {
            ai_busy: true,
            ..ready
        };
        assert_eq!(run.step(&busy), (vec![], false));
        assert_eq!(run.stage, Stage::Asking);
        let answered = Observation {
            ai_answered: true,
            ..ready
        };
        let mut shots = 0;
        for _ in 0..SETTLE_FRAMES + 3 {
            let (c, s) = run.step(&answered);
            assert!(c.is_empty());
            shots += s as usize;
        }
        assert_eq!(shots, 1, "exactly one screenshot request");
    }

    #[test]
    fn a_failed_image_is_shot_as_is() {
        let mut run = ScreenshotRun::new(plan());
        let failed = Observation {
            image_failed: true,
            ..Default::default()
        };
        let mut requested = false;
        for _ in 0..SETTLE_FRAMES + 1 {
            let (c, s) = run.step(&failed);
            assert!(c.is_empty());
            requested |= s;
        }
        assert!(requested);
    }
}
