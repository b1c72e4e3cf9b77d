//! The agent's log: `tracing`, written by tracing-subscriber to stderr,
//! with the `log` records of the code (and of aya-log, the datapath's own
//! lines) bridged into it. Its filter can be changed while the agent runs
//! (`PUT /v1/log-level`, `eip-nat log-level`).

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
};

use tracing_subscriber::{
    filter::{EnvFilter, LevelFilter},
    layer::SubscriberExt,
    reload,
    util::SubscriberInitExt,
    Registry,
};

/// Changes the filter of the running agent's log.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directives in effect, as given.
    current: Arc<Mutex<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0:?} is not a log filter (a level: off, error, warn, info, debug, trace; or directives such as `info,eip_nat::server=debug`): {1}")]
    Invalid(String, String),
    #[error("setting up the log: {0}")]
    Init(String),
}

fn filter(directives: &str) -> Result<EnvFilter, LogError> {
    // A bare word is a target to EnvFilter (`loud` would mean "everything
    // from target loud"): here it must be a level.
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        if !d.contains('=') && d.parse::<LevelFilter>().is_err() {
            return Err(LogError::Invalid(
                directives.into(),
                format!("{d:?} is no level"),
            ));
        }
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogError::Invalid(directives.into(), e.to_string()))
}

/// Checks a filter (the configuration's `log_level`).
pub fn check(directives: &str) -> Result<(), LogError> {
    filter(directives).map(drop)
}

/// The `log` crate's gate, which its macros check before anything else,
/// must let through what the filter lets through.
fn set_log_max(f: &EnvFilter) {
    let max = match f.max_level_hint() {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    log::set_max_level(max);
}

/// Installs the log: `RUST_LOG` if set, else `level` (the configuration's
/// `log_level`).
pub fn init(level: &str) -> Result<LogControl, LogError> {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    let f = filter(&directives)?;
    let (layer, handle) = reload::Layer::new(f);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))?;
    handle
        .with_current(set_log_max)
        .map_err(|e| LogError::Init(e.to_string()))?;
    Ok(LogControl {
        handle,
        current: Arc::new(Mutex::new(directives)),
    })
}

impl LogControl {
    /// The filter in effect.
    pub fn get(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter; the next line logged follows it.
    pub fn set(&self, directives: &str) -> Result<(), LogError> {
        let directives = directives.trim();
        let f = filter(directives)?;
        set_log_max(&f);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        self.handle
            .reload(f)
            .map_err(|e| LogError::Init(e.to_string()))?;
        *current = directives.to_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        assert!(filter("debug").is_ok());
        assert!(filter("info,eip_nat::server=debug").is_ok());
        for bad in ["loud", "info,eip_nat=loud", "debug,x"] {
            let e = filter(bad).unwrap_err().to_string();
            assert!(e.contains("not a log filter"), "{bad}: {e}");
        }
    }
}
