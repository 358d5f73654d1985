//! Every request of every listener, counted: answers by route template,
//! method and status code, the time to the answer's headers, error answers
//! by their stable code (`ErrorCode`, which `ApiError` and the error
//! contract leave in the response) and those that failed on the database.
//!
//! The route is axum's matched template (`/api/v1/devices/{id}`), never the
//! path, so the series are bounded by the routes the code has; a request no
//! route matched counts as `unmatched`.
//!
//! This sits on the poll hot path (about 100,000 answers a second on two
//! cores), so a request costs a few atomic additions and no lock, hash or
//! allocation: [`CountLayer`] is a tower layer (no boxed future), each
//! route's service finds its [`RouteCounts`] once and keeps it, answers are
//! counted in a small table of (method, status) slots and latencies in an
//! atomic histogram. [`RouteTable`] encodes them at scrape time. Error
//! answers, which are rare, go through ordinary label families.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{ErrorLabels, ListenerLabels, Metrics, RequestLabels, RouteLabels, LATENCY_BUCKETS};
use crate::http::error::{DatabaseFailure, ErrorCode};

/// (method, status) pairs one route counts without a lock; a route that
/// answers more kinds (none does) counts the rest in `overflow`.
const ANSWER_SLOTS: usize = 24;

/// The answers and latencies of one route of one listener.
#[derive(Debug)]
pub struct RouteCounts {
    listener: &'static str,
    route: &'static str,
    /// Each slot: (method index + 1) << 16 | status (0: free), and its count.
    answers: [(AtomicU32, AtomicU64); ANSWER_SLOTS],
    /// Observations per latency bucket (not cumulative), the last +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The latencies' sum, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl RouteCounts {
    fn new(listener: &'static str, route: &'static str) -> Self {
        RouteCounts {
            listener,
            route,
            answers: std::array::from_fn(|_| (AtomicU32::new(0), AtomicU64::new(0))),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one answer; false when every slot holds another kind.
    fn count_answer(&self, method: usize, status: u16) -> bool {
        let key = ((method as u32 + 1) << 16) | u32::from(status);
        for (slot, count) in &self.answers {
            let held = slot.load(Relaxed);
            if held == key
                || (held == 0
                    && match slot.compare_exchange(0, key, Relaxed, Relaxed) {
                        Ok(_) => true,
                        Err(now) => now == key,
                    })
            {
                count.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }

    fn observe(&self, seconds: f64, nanos: u64) {
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }
}

/// Every route's counts, for the scrape; and where a route's service finds
/// its own the first time.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Mutex<Vec<Arc<RouteCounts>>>,
    /// Answers of a kind a route had no free slot for.
    overflow: Mutex<std::collections::HashMap<RequestLabels, u64>>,
}

impl RouteTable {
    /// The counts of `route` on `listener`, made on first use.
    fn get(&self, listener: &'static str, route: &str) -> Arc<RouteCounts> {
        let mut routes = self.routes.lock().expect("lock");
        if let Some(found) = routes
            .iter()
            .find(|r| r.listener == listener && r.route == route)
        {
            return found.clone();
        }
        // Leaked once per route template: there are as many as the code has.
        let route: &'static str = Box::leak(route.into());
        let counts = Arc::new(RouteCounts::new(listener, route));
        routes.push(counts.clone());
        counts
    }

    fn count_overflow(&self, labels: RequestLabels) {
        *self
            .overflow
            .lock()
            .expect("lock")
            .entry(labels)
            .or_default() += 1;
    }
}

impl prometheus_client::collector::Collector for RouteTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes = self.routes.lock().expect("lock").clone();
        let mut family = encoder.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by listener, route template, method and status code",
            None,
            MetricType::Counter,
        )?;
        for r in &routes {
            for (slot, count) in &r.answers {
                let key = slot.load(Relaxed);
                if key == 0 {
                    continue;
                }
                let labels = RequestLabels {
                    listener: r.listener,
                    route: r.route,
                    method: METHODS[(key >> 16) as usize - 1].1,
                    code: (key & 0xffff) as u16,
                };
                ConstCounter::new(count.load(Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }
        let overflow = self.overflow.lock().expect("lock").clone();
        for (labels, count) in &overflow {
            ConstCounter::new(*count).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration",
            "Time from a request to its answer's headers (a long poll's wait included)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for r in &routes {
            // Per bucket, not cumulative (the encoder adds them up), +Inf last.
            let counts: Vec<u64> = r.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts.iter().copied())
                .collect();
            let count = counts.iter().sum();
            let sum = r.sum_nanos.load(Relaxed) as f64 / 1e9;
            let labels = RouteLabels {
                listener: r.listener,
                route: r.route,
            };
            family
                .encode_family(&labels)?
                .encode_histogram::<RouteLabels>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Methods by index, as labels.
const METHODS: [(Method, &str); 8] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::PATCH, "PATCH"),
    (Method::DELETE, "DELETE"),
    (Method::HEAD, "HEAD"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::CONNECT, "other"),
];

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|(m, _)| m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Counts the requests of one listener: `Router::layer(CountLayer::new(..))`
/// outermost, so it sees the answer as it leaves.
#[derive(Clone)]
pub struct CountLayer {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl CountLayer {
    pub fn new(metrics: Arc<Metrics>, listener: &'static str) -> Self {
        CountLayer { metrics, listener }
    }
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            metrics: self.metrics.clone(),
            listener: self.listener,
            // axum layers each route's service on its own: shared by the
            // clones of that service, so found once per route.
            known: Arc::default(),
        }
    }
}

#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    metrics: Arc<Metrics>,
    listener: &'static str,
    /// The route template this service last served, by the address of
    /// axum's `MatchedPath` string, and its counts.
    known: Arc<OnceLock<(usize, Arc<RouteCounts>)>>,
}

impl<S> Count<S> {
    fn counts(&self, request: &Request) -> Arc<RouteCounts> {
        let matched = request.extensions().get::<MatchedPath>();
        let (address, route) = matched.map_or((0, "unmatched"), |m| {
            (m.as_str().as_ptr() as usize, m.as_str())
        });
        if let Some((known, counts)) = self.known.get() {
            if *known == address {
                return counts.clone();
            }
        }
        let counts = self.metrics.routes.get(self.listener, route);
        let _ = self.known.set((address, counts.clone()));
        counts
    }
}

impl<S> tower::Service<Request> for Count<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counting<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let counts = self.counts(&request);
        let method = method_index(request.method());
        Counting {
            inner: self.inner.call(request),
            started: Instant::now(),
            method,
            counts,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, counted when it gives the answer.
    pub struct Counting<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: usize,
        counts: Arc<RouteCounts>,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for Counting<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            record(
                this.metrics,
                this.counts,
                *this.method,
                *this.started,
                response,
            );
        }
        Poll::Ready(result)
    }
}

fn record(
    metrics: &Metrics,
    counts: &RouteCounts,
    method: usize,
    started: Instant,
    response: &Response,
) {
    let took = started.elapsed();
    counts.observe(
        took.as_secs_f64(),
        took.as_nanos().min(u128::from(u64::MAX)) as u64,
    );
    let (listener, route) = (counts.listener, counts.route);
    let status = response.status().as_u16();
    if !counts.count_answer(method, status) {
        metrics.routes.count_overflow(RequestLabels {
            listener,
            route,
            method: METHODS[method].1,
            code: status,
        });
    }
    if let Some(ErrorCode(error)) = response.extensions().get::<ErrorCode>() {
        metrics
            .errors
            .get_or_create(&ErrorLabels {
                listener,
                route,
                error,
            })
            .inc();
    }
    if response.extensions().get::<DatabaseFailure>().is_some() {
        metrics
            .database_errors
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fill_slots_once_per_kind_and_overflow_past_the_table() {
        let counts = RouteCounts::new("device", "/x");
        assert!(counts.count_answer(0, 304));
        assert!(counts.count_answer(0, 304));
        assert!(counts.count_answer(1, 204));
        let used: Vec<(u32, u64)> = counts
            .answers
            .iter()
            .map(|(k, c)| (k.load(Relaxed), c.load(Relaxed)))
            .filter(|(k, _)| *k != 0)
            .collect();
        assert_eq!(used, [((1 << 16) | 304, 2), ((2 << 16) | 204, 1)]);
        for status in 0..(ANSWER_SLOTS as u16 - 2) {
            assert!(counts.count_answer(2, 500 + status));
        }
        assert!(!counts.count_answer(3, 200), "the table is full");
        assert!(
            counts.count_answer(0, 304),
            "kinds already held still count"
        );
    }

    #[test]
    fn latencies_fall_in_their_bucket_and_add_up() {
        let counts = RouteCounts::new("device", "/x");
        counts.observe(0.0005, 500_000);
        counts.observe(0.001, 1_000_000);
        counts.observe(0.2, 200_000_000);
        counts.observe(100.0, 100_000_000_000);
        let b: Vec<u64> = counts.buckets.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(b[0], 2, "up to 1 ms");
        assert_eq!(
            b[LATENCY_BUCKETS.iter().position(|&u| u == 0.25).unwrap()],
            1
        );
        assert_eq!(b[LATENCY_BUCKETS.len()], 1, "+Inf");
        assert_eq!(counts.sum_nanos.load(Relaxed), 100_201_500_000);
    }
}
