//! redb panics on some corrupt files: its calls are wrapped so that this is an error.

use super::*;

/// Runs a redb operation, turning a panic (redb panics on some corrupt files) into an
/// [`StorageError::Unusable`] error.
pub(super) fn without_panics<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_panics_hook();
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(StorageError::Unusable(format!(
                "the database {} is corrupt (redb: {what}); move the data dir away and start this machine as a new node (with --bootstrap of a member)",
                path.display()
            )))
        }
    }
}

thread_local! {
    /// Set while redb runs inside [`without_panics`]: its panics are caught and reported as
    /// an error, so the default hook's message and backtrace would only alarm.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent on threads inside [`without_panics`] and
/// reports every other panic as before.
pub(super) fn quiet_panics_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}
