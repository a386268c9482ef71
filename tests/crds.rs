//! `crds/` and the chart's copy are generated from the Rust types: this fails when someone changes one
//! without the others.

#[test]
fn committed_crds_match_the_types() {
    for file in [
        "crds/secretsync.yaml",
        "charts/secretsync/crds/secretsync.yaml",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(
            committed == secretsync::api::crds_yaml(),
            "{file} is out of date with the API types: run `make crds` and commit the result"
        );
    }
}
