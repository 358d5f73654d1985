//! Every request of every listener, counted: answers by route template,
//! method and status code, the time to the answer's headers, error answers
//! by their stable code (`ErrorCode`, which `ApiError` and the error
//! contract leave in the response) and those that failed on the database.
//!
//! The route is axum's matched template (`/api/v1/devices/{id}`), never the
//! path, so the series are bounded by the routes the code has; a request no
//! route matched counts as `unmatched`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::{ErrorLabels, ListenerLabels, Metrics, RequestLabels, RouteLabels};
use crate::http::error::{DatabaseFailure, ErrorCode};

/// What the middleware needs: the metrics and which listener it counts.
#[derive(Clone)]
pub struct Counted {
    pub metrics: Arc<Metrics>,
    pub listener: &'static str,
    routes: Arc<RouteNames>,
}

impl Counted {
    pub fn new(metrics: Arc<Metrics>, listener: &'static str) -> Self {
        Counted {
            metrics,
            listener,
            routes: Arc::default(),
        }
    }
}

/// Route templates as `&'static str` label values: each template is
/// leaked once, and there are only as many as the routers declare.
#[derive(Default)]
struct RouteNames(RwLock<HashMap<Box<str>, &'static str>>);

impl RouteNames {
    fn get(&self, template: &str) -> &'static str {
        if let Some(name) = self.0.read().expect("lock").get(template) {
            return name;
        }
        let mut names = self.0.write().expect("lock");
        names
            .entry(template.into())
            .or_insert_with(|| Box::leak(template.into()))
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn count(State(counted): State<Counted>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| counted.routes.get(m.as_str()));
    let method = method_name(request.method());
    let response = next.run(request).await;
    let listener = counted.listener;
    let metrics = &counted.metrics;
    metrics
        .request_seconds
        .get_or_create(&RouteLabels { listener, route })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            listener,
            route,
            method,
            code: response.status().as_u16(),
        })
        .inc();
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
    response
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
