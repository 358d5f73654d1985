//! Controller integration tests: the real controller on port 0 against a real
//! PostgreSQL, one database per test. One test binary keeps link times down.

mod api;
mod blocks;
mod catalog;
mod cli;
mod crash;
mod dashboard;
mod dashboard_api;
mod dashboard_forms;
mod dashboard_rollout_form;
mod dashboard_screenshots;
mod device_api;
mod device_certificates;
mod enrollment;
mod haproxy;
mod hardening;
mod health;
mod history;
mod kubernetes;
mod limits;
mod login_csrf;
mod metrics;
mod openapi_contract;
mod operator_jobs;
mod operators;
mod pay_per_site_fleet;
mod portal;
mod prometheus;
mod recompile;
mod replicas;
mod rollouts;
mod support;
mod tidy;
mod vpn_control;
mod vpns;
mod webdriver;
