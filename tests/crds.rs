//! `crds/` is generated from the Rust types: this fails when someone changes one without the other.

#[test]
fn committed_crds_match_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/secretsync.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/secretsync.yaml exists");
    assert!(
        committed == secretsync::api::crds_yaml(),
        "crds/secretsync.yaml is out of date with the API types: run `make crds` and commit the result"
    );
}
