//! One shutdown signal, fanned out to every part of a process.

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown requested; draining");
        cancel.cancel();
    });
    token
}

/// Runs `work` to its end, but once `token` is cancelled gives it at most `timeout` more: a
/// service stops within its shutdown timeout whatever is unreachable (DESIGN §1.6). Work abandoned
/// then is safe to abandon: unacknowledged messages are redelivered.
pub async fn within_deadline<F>(work: F, token: &CancellationToken, timeout: std::time::Duration) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        result = work => result,
        () = deadline => {
            tracing::warn!(timeout_secs = timeout.as_secs(), "shutdown timeout reached; abandoning in-flight work (it is redelivered)");
            Ok(())
        }
    }
}
