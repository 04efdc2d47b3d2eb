//! Who a piece of work is done for. The API edge runs each RPC inside [`with_caller`]; every
//! event recorded while it runs (upstream calls, issued tokens, status changes) names that
//! caller, without the name being handed from function to function. Work that outlives the
//! RPC (a fetch task shared by several callers) takes the caller of the RPC that started it
//! along with [`current_caller`] and [`with_caller`].

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CALLER: Option<Arc<str>>;
}

/// The caller of the work running now, if it runs for one.
pub fn current_caller() -> Option<Arc<str>> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// Runs `work` on behalf of `caller` (`None`: on nobody's behalf, e.g. a config-file sync).
pub async fn with_caller<F: Future>(caller: Option<Arc<str>>, work: F) -> F::Output {
    CALLER.scope(caller, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_is_seen_inside_and_not_outside() {
        assert_eq!(current_caller(), None);
        let seen = with_caller(Some("billing".into()), async { current_caller() }).await;
        assert_eq!(seen.as_deref(), Some("billing"));
        let nested = with_caller(Some("a".into()), async {
            with_caller(None, async { current_caller() }).await
        })
        .await;
        assert_eq!(nested, None);
    }
}
