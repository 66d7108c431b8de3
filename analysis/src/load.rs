//! Sending requests: bounded concurrency, counted per replica, with a progress bar.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::count::{Outcome, Tally};

/// The HTTP client of the experiments: plain HTTP, no proxy from the environment.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One `GET url`, classified.
pub async fn get(client: &reqwest::Client, url: &str) -> Outcome {
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(body) => Outcome::from_response(status, &body),
                Err(error) => Outcome::Failed(error_chain(&error)),
            }
        }
        Err(error) => Outcome::Failed(error_chain(&error)),
    }
}

/// The error with its causes: reqwest's own message is only "error sending request".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(total: u64, label: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// Sends `total` `GET url` with at most `concurrency` in flight and counts the answers
/// per replica into `tally`. Returns the time it took.
pub async fn send_all(
    client: &reqwest::Client,
    url: &str,
    total: u64,
    concurrency: usize,
    label: &str,
    tally: &mut Tally,
) -> Duration {
    let bar = progress(total, label);
    let started = Instant::now();
    let mut answers = futures::stream::iter(0..total)
        .map(|_| get(client, url))
        .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = answers.next().await {
        tally.record(outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    started.elapsed()
}
