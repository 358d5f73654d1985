//! `isdfctl releases`: sign a manifest offline with the release key, upload
//! it with its binary, list it; a manifest signed with the config key is
//! refused by the server with its code, and isdfctl says so.

use super::Ctl;
use crate::support::Harness;

#[tokio::test]
async fn cli_signs_offline_uploads_and_lists_a_release() {
    let h = Harness::start().await;
    let ctl = Ctl::new(&h);
    let data = &h.controller.data_dir;
    let binary = ctl.dir.path().join("isdf-agent");
    std::fs::write(&binary, b"\x7fELF a build of the agent").unwrap();
    let manifest = ctl.dir.path().join("manifest.json");
    let (binary, manifest) = (binary.to_str().unwrap(), manifest.to_str().unwrap());
    // Signing needs no controller: an unreachable server does not matter.
    let signed = ctl
        .run_with(
            &[
                "releases",
                "sign",
                "--key",
                data.join("release-key.pem").to_str().unwrap(),
                "--binary",
                binary,
                "--agent-version",
                "0.7.0",
                "--target",
                "aarch64-unknown-linux-musl",
                "--out",
                manifest,
            ],
            None,
            &[("ISDF_SERVER", "http://127.0.0.1:9")],
        )
        .await;
    assert_eq!(signed.code, 0, "{}{}", signed.stdout, signed.stderr);
    let uploaded = ctl
        .json(&[
            "releases",
            "upload",
            "--manifest",
            manifest,
            "--binary",
            binary,
        ])
        .await;
    assert_eq!(uploaded["version"], "0.7.0");
    assert_eq!(uploaded["target"], "aarch64-unknown-linux-musl");
    assert_eq!(uploaded["uploaded"], true);
    let listed = ctl.ok(&["releases", "list"]).await;
    assert!(
        listed.stdout.contains("0.7.0") && listed.stdout.contains("aarch64-unknown-linux-musl"),
        "{}",
        listed.stdout
    );

    // The config key cannot sign a release the server takes.
    let forged = ctl.dir.path().join("forged.json");
    ctl.ok(&[
        "releases",
        "sign",
        "--key",
        data.join("signing-key.pem").to_str().unwrap(),
        "--binary",
        binary,
        "--agent-version",
        "0.7.1",
        "--target",
        "aarch64-unknown-linux-musl",
        "--out",
        forged.to_str().unwrap(),
    ])
    .await;
    let refused = ctl
        .run(&[
            "releases",
            "upload",
            "--manifest",
            forged.to_str().unwrap(),
            "--binary",
            binary,
        ])
        .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("release_not_signed_by_release_key"),
        "{}",
        refused.stderr
    );
}
