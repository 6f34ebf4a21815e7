//! The live view of a run: an indicatif bar when stdout is a terminal, a plain line every
//! two seconds when it is not (CI logs, files), nothing in tests.

use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::counters::Counters;

/// How the run shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    Quiet,
}

impl ProgressMode {
    fn resolve(self) -> Self {
        match self {
            Self::Auto if std::io::stdout().is_terminal() => Self::Bar,
            Self::Auto => Self::Lines,
            m => m,
        }
    }
}

/// The running display; stops on [`Progress::finish`] or drop.
pub struct Progress {
    stage: Arc<Mutex<&'static str>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn line(stage: &str, c: &Counters, total: u64, rate: f64) -> String {
    format!(
        "{stage:<10} connected {}/{total} failed {} open {} published {} acked {} delivered {} ({rate:.0}/s)",
        c.connected.load(Relaxed),
        c.failed.load(Relaxed),
        c.alive.load(Relaxed),
        c.published.load(Relaxed),
        c.acked.load(Relaxed),
        c.delivered.load(Relaxed),
    )
}

impl Progress {
    pub fn start(mode: ProgressMode, counters: Arc<Counters>, total: u64) -> Self {
        let stage = Arc::new(Mutex::new("starting"));
        let (stop, mut stopped) = watch::channel(false);
        let mode = mode.resolve();
        let task = (mode != ProgressMode::Quiet).then(|| {
            let stage = stage.clone();
            tokio::spawn(async move {
                let bar = (mode == ProgressMode::Bar).then(|| {
                    let bar =
                        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
                    bar.set_style(
                        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar
                });
                let every =
                    if bar.is_some() { Duration::from_millis(250) } else { Duration::from_secs(2) };
                let mut last = (Instant::now(), 0u64);
                // Bounded in time by the run: the loop ends when `finish` is called or the
                // display is dropped.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stopped.changed() => break,
                    }
                    let delivered = counters.delivered.load(Relaxed);
                    let secs = last.0.elapsed().as_secs_f64().max(1e-3);
                    let rate = delivered.saturating_sub(last.1) as f64 / secs;
                    last = (Instant::now(), delivered);
                    let st = *stage.lock().unwrap_or_else(|e| e.into_inner());
                    let text = line(st, &counters, total, rate);
                    match &bar {
                        Some(bar) => {
                            bar.set_position(
                                counters.connected.load(Relaxed) + counters.failed.load(Relaxed),
                            );
                            bar.set_message(text);
                        }
                        None => println!("{text}"),
                    }
                }
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            })
        });
        Self { stage, stop, task }
    }

    pub fn set_stage(&self, stage: &'static str) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = stage;
    }

    /// Stops the display and waits (briefly) for the bar to clear before the table prints.
    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
