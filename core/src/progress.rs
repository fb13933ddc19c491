//! Layer 0: the one progress bar every long loop shows (fitting, BALI epochs, predictive sampling,
//! the samplers, meta-learning). Each loop's `progress: bool` setting switches it.

use std::borrow::Cow;

/// A progress bar on stderr, `label {bar} pos/len [elapsed<eta] message`.
///
/// Switchable: a bar made with `enabled = false` does nothing at all, and an enabled one draws
/// nothing while stderr is not a terminal (logs and pipes stay clean). Cloning gives a handle to
/// the same bar.
///
/// ```
/// use weightspace::Progress;
/// let bar = Progress::new(3, false, "demo");
/// for i in 0..3 {
///     bar.message(format!("step {i}"));
///     bar.inc();
/// }
/// bar.finish();
/// ```
#[derive(Debug, Clone)]
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar over `steps` steps, labelled `label`; `enabled = false` makes every call a no-op.
    pub fn new(steps: usize, enabled: bool, label: &str) -> Self {
        if !enabled {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        Self(Some(bar))
    }

    /// Whether the bar was switched on.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Advances by one step.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Advances by `n` steps.
    pub fn inc_by(&self, n: usize) {
        if let Some(b) = &self.0 {
            b.inc(n as u64);
        }
    }

    /// Sets the position.
    pub fn set_position(&self, step: usize) {
        if let Some(b) = &self.0 {
            b.set_position(step as u64);
        }
    }

    /// Sets the message shown after the bar.
    pub fn message(&self, msg: impl Into<Cow<'static, str>>) {
        if let Some(b) = &self.0 {
            b.set_message(msg);
        }
    }

    /// Prints a line above the bar (nothing when the bar is off or hidden).
    pub fn println(&self, line: impl AsRef<str>) {
        if let Some(b) = &self.0 {
            b.println(line);
        }
    }

    /// Removes the bar (the loop is done).
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }

    /// Leaves the bar where it stopped (after an error).
    pub fn abandon(&self) {
        if let Some(b) = &self.0 {
            b.abandon();
        }
    }
}
