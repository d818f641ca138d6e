//! The Python client (`clients/python`), installed as a user would install
//! it, and its pytest suite run against tansu and this build's herald.

use std::process::Command;

use crate::support::ensure_python_package;

#[test]
fn the_python_client_installs_and_its_tests_pass_against_tansu_and_herald() {
    ensure_python_package("pytest", "pytest");
    ensure_python_package("fastavro", "fastavro");
    // confluent-kafka's Schema Registry client needs these.
    ensure_python_package("authlib", "confluent-kafka[avro,schemaregistry]");
    let root = env!("CARGO_MANIFEST_DIR");
    let target = std::env::temp_dir().join(format!("herald-python-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    let installed = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&target)
        .arg(format!("{root}/clients/python"))
        .status()
        .expect("running pip");
    assert!(installed.success(), "pip install clients/python failed");
    // The installed package, not the source tree, is imported: the schemas
    // must have been packaged.
    let tests = std::env::temp_dir().join(format!("herald-python-client-tests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tests);
    std::fs::create_dir_all(&tests).unwrap();
    for file in ["conftest.py", "test_client.py", "test_unit.py"] {
        std::fs::copy(format!("{root}/clients/python/tests/{file}"), tests.join(file)).unwrap();
    }
    // `herald api`, which the HTTP mode's test starts, keeps its store in
    // CQL: kassandra, in this process, for as long as pytest runs.
    let cql = herald_testkit::Cql::start();
    let status = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&tests)
        .env("PYTHONPATH", &target)
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_ROOT", root)
        .env("HERALD_TEST_CQL_ARGS", serde_json::to_string(&cql.args()).unwrap())
        .status()
        .expect("running pytest");
    assert!(status.success(), "the Python client's tests failed");
}
