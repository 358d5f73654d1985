//! Compile+sign throughput for one device with 100 rules (flow patterns
//! from 100 assignments): the work the controller does per changed device.
//!
//! Run: `cargo bench -p isdf-controller --bench compile_sign`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use isdf_controller::model::{Labels, Selector};
use isdf_controller::reconcile::signer::{ConfigSigner, FileSigner};
use isdf_controller::services::compiler::{compile_firewall, CompiledAssignment};
use isdf_controller::services::{ServiceKind, ServiceSpec};

fn assignments(count: usize) -> Vec<CompiledAssignment> {
    (0..count)
        .map(|i| {
            let flow = if i % 4 == 3 {
                serde_json::json!({"protocol": "udp", "dst": format!("2001:db8:{:x}::/48", i), "dport": 1000 + i})
            } else {
                serde_json::json!({"protocol": "tcp", "src": format!("192.0.2.{}", i % 250), "dst": format!("198.51.{}.0/24", i % 250), "dport": format!("{}-{}", 2000 + i, 2010 + i)})
            };
            let action = if i % 2 == 0 { "drop" } else { "reject" };
            let spec = serde_json::json!({"action": action, "flows": [flow], "duration_secs": 3600});
            CompiledAssignment {
                id: uuid::Uuid::new_v4(),
                selector: Selector::parse("env=prod").unwrap(),
                created_at: 1_795_000_000,
                spec: ServiceSpec::parse(ServiceKind::FlowBlock, &spec).unwrap(),
            }
        })
        .collect()
}

fn compile_and_sign(c: &mut Criterion) {
    let assignments = assignments(100);
    let labels: Labels = serde_json::from_value(serde_json::json!({"env": "prod"})).unwrap();
    let signer = FileSigner::from_key(SigningKey::from_bytes(&[7; 32]));
    let mut group = c.benchmark_group("controller");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compile+sign, 100 rules", |b| {
        b.iter(|| {
            let firewall = compile_firewall(&labels, &assignments, &[], None, 1_795_000_100);
            let config = isdf_api::DeviceConfig {
                device_id: "7f0b3c1e-2f43-4a51-9a0e-6c1d2b3a4f50".into(),
                version: 7,
                issued_at: 1_795_000_100,
                expires_at: 1_795_604_900,
                firewall,
                agent_release: None,
            };
            let payload = serde_json::to_vec(&config).unwrap();
            signer
                .sign(isdf_api::CONFIG_PAYLOAD_TYPE, &payload)
                .unwrap()
                .to_json()
        })
    });
    group.finish();
}

criterion_group!(benches, compile_and_sign);
criterion_main!(benches);
