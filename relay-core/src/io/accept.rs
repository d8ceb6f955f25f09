//! Accepting TCP connections on a listener that must keep serving: an
//! accept error (EMFILE, ENFILE, ENOBUFS and the like) is logged and
//! followed by a short pause, so the loop neither dies nor spins. Shared by
//! the control, tunnel and TURN listeners.

use std::time::Duration;

/// How long a listener pauses after an accept error.
const BACK_OFF: Duration = Duration::from_millis(50);

/// The next connection, or `None` after an accept error (logged with
/// `what`, the listener's name, then a pause of [`BACK_OFF`]).
pub(crate) async fn accept_or_back_off(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener.accept().await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, listener = what, "accept failed");
            tokio::time::sleep(BACK_OFF).await;
            None
        }
    }
}
