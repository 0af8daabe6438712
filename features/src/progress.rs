//! Where long work reports progress. A command run on its own draws its bars straight to stderr;
//! `ibot suite` draws one overall display and hangs each unit's bar (extraction batches, linear
//! epochs, k-means restarts …) below its top bar, so nothing else may write lines in between. Code
//! that shows progress takes a [`Progress`] and never creates bars or prints log lines itself.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Template of the bars made by [`Progress::bar`].
pub const BAR_TEMPLATE: &str = "{msg} {bar:40} {pos}/{len} [{elapsed} < {eta}]";

/// The standard template with a rate, for bars that count images.
pub const RATE_TEMPLATE: &str = "{msg} {bar:40} {pos}/{len} [{elapsed} < {eta}] {per_sec}";

/// How bars are drawn: on their own (the default), under a parent display, or not at all.
#[derive(Clone, Default)]
pub struct Progress {
    target: Target,
}

#[derive(Clone, Default)]
enum Target {
    /// One bar at a time on stderr (hidden by indicatif when stderr is not a terminal).
    #[default]
    Standalone,
    /// Attached below the bars already in the display; removed when finished.
    Under(MultiProgress),
    Hidden,
}

impl Progress {
    /// Bars on stderr, as a command run on its own shows them.
    pub fn standalone() -> Self {
        Progress::default()
    }

    /// No bars at all (`--quiet`); log lines still go to stderr.
    pub fn hidden() -> Self {
        Progress {
            target: Target::Hidden,
        }
    }

    /// Bars attached below the ones `parent` already shows.
    pub fn under(parent: &MultiProgress) -> Self {
        Progress {
            target: Target::Under(parent.clone()),
        }
    }

    /// A bar of `len` steps with the standard template, cleared (and detached from a parent
    /// display) when the returned guard is dropped, also on an early return with an error.
    pub fn bar(&self, len: u64, message: impl Into<String>) -> Bar {
        self.bar_with_template(len, BAR_TEMPLATE, message)
    }

    /// As [`Progress::bar`] with an indicatif template of the caller's.
    pub fn bar_with_template(&self, len: u64, template: &str, message: impl Into<String>) -> Bar {
        let bar = match &self.target {
            Target::Standalone => ProgressBar::new(len),
            Target::Under(parent) => parent.add(ProgressBar::new(len)),
            Target::Hidden => ProgressBar::hidden(),
        };
        let indent = if matches!(self.target, Target::Under(_)) {
            "  "
        } else {
            ""
        };
        // A bad template is a programming error in a literal; fall back to the default style
        // rather than fail the work the bar only decorates.
        if let Ok(style) = ProgressStyle::with_template(&format!("{indent}{template}")) {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        Bar {
            bar,
            parent: match &self.target {
                Target::Under(parent) => Some(parent.clone()),
                _ => None,
            },
        }
    }

    /// A log line: above the bars while a display is drawn, plain stderr otherwise (logs, CI, tests).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.target {
            Target::Under(parent) if !parent.is_hidden() => {
                let _ = parent.println(line.as_ref());
            }
            _ => eprintln!("{}", line.as_ref()),
        }
    }
}

/// The overall display of a run made of units: pass `hidden` for `--quiet`; indicatif hides it
/// by itself when stderr is not a terminal.
pub fn display(hidden: bool) -> MultiProgress {
    if hidden {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    }
}

/// A bar that clears itself when dropped; derefs to the indicatif bar.
pub struct Bar {
    bar: ProgressBar,
    parent: Option<MultiProgress>,
}

impl std::ops::Deref for Bar {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Some(parent) = &self.parent {
            parent.remove(&self.bar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_under_a_parent_count_and_log_lines_do_not_panic_when_hidden() {
        let parent = display(true);
        let top = parent.add(ProgressBar::new(3));
        let p = Progress::under(&parent);
        {
            let inner = p.bar(5, "inner");
            inner.inc(2);
            assert_eq!(inner.position(), 2);
            assert_eq!(inner.length(), Some(5));
            p.println("a line while the display is hidden goes to stderr");
        }
        top.inc(1);
        assert_eq!(top.position(), 1);
        let hidden = Progress::hidden().bar(4, "x");
        assert!(hidden.is_hidden());
    }
}
