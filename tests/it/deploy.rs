//! The Kubernetes manifests (`deploy/k8s`): checked against the Kubernetes
//! API schemas and against herald itself (`deploy/k8s/check.py`).

use std::process::Command;

use crate::support::ensure_python_package;

#[test]
fn the_kubernetes_manifests_are_valid_and_agree_with_herald() {
    ensure_python_package("kubernetes_validate", "kubernetes-validate");
    ensure_python_package("yaml", "pyyaml");
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3").arg(format!("{root}/deploy/k8s/check.py")).arg(env!("CARGO_BIN_EXE_herald")).output().expect("running check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("10 resources valid"), "{stdout}");
}
