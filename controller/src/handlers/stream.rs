//! `/api/v1/stream`: Server-Sent Events telling the dashboard what changed
//! (see [`crate::reconcile::live`]), so it refetches without reloading.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};

use crate::http::auth::Operator;
use crate::http::state::AppState;
use crate::reconcile::live::{Change, Topic};

/// At most one batch of events per this interval per connection: a fleet
/// reporting at once must not make every open page refetch hundreds of
/// times a second.
pub const COALESCE: Duration = Duration::from_millis(500);
/// Distinct changes sent per batch; beyond that one `resync` replaces them.
const MAX_PER_BATCH: usize = 32;

#[utoipa::path(get, path = "/api/v1/stream", tag = "fleet",
    responses((status = 200, content_type = "text/event-stream",
        description = "Events `change` with data {\"topic\": \"device\"|\"rollout\"|\"config\"|\"audit\"|\"resync\", \"id\": uuid?}, at most two batches a second; keep-alive comments every 15 s")))]
pub async fn stream(
    _operator: Operator,
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let updates = state.live.subscribe();
    let (sender, receiver) = mpsc::channel::<Event>(MAX_PER_BATCH + 1);
    tokio::spawn(forward(updates, sender));
    let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|e| (Ok(e), receiver))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Collects changes and sends them in batches, until the client leaves.
async fn forward(mut updates: broadcast::Receiver<Topic>, sender: mpsc::Sender<Event>) {
    loop {
        // Wait for the first change (or the client leaving).
        let first = tokio::select! {
            update = updates.recv() => update,
            () = sender.closed() => return,
        };
        let mut batch: Vec<Change> = Vec::new();
        let mut seen = HashSet::new();
        let mut lagged = false;
        let mut take = |update: Result<Topic, broadcast::error::RecvError>| match update {
            Ok(topic) => {
                let change = Change::from(topic);
                if seen.insert(change.clone()) {
                    batch.push(change);
                }
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                lagged = true;
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if !take(first) {
            return;
        }
        // Gather what else arrives within the interval.
        let deadline = tokio::time::Instant::now() + COALESCE;
        while let Ok(update) = tokio::time::timeout_at(deadline, updates.recv()).await {
            if !take(update) {
                break;
            }
        }
        if lagged || batch.len() > MAX_PER_BATCH {
            batch = vec![Change::RESYNC];
        }
        for change in batch {
            let event = Event::default()
                .event("change")
                .json_data(&change)
                .expect("a change serializes");
            if sender.send(event).await.is_err() {
                return;
            }
        }
    }
}
