//! The operator image (`make image`): distroless static nonroot's layout, and the operator running from it as
//! its pod would, as user 65532 on a read-only root filesystem.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::{TestContext, env_vars};

/// The image `make test` built, and the daemon holding it.
fn image() -> String {
    std::env::var("SECRETSYNC_IMAGE").expect(
        "SECRETSYNC_IMAGE: the image to test. `make test` builds it; by hand: \
         export DOCKER_HOST=$(hack/docker.sh up) SECRETSYNC_IMAGE=$(hack/build-image.sh)",
    )
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker is required: `hack/docker.sh up` installs and starts it")
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every path in the image's root filesystem.
fn files(image: &str) -> BTreeSet<String> {
    let container = docker_ok(&["create", image]).trim().to_string();
    let export = Command::new("sh")
        .args(["-c", &format!("docker export {container} | tar -t")])
        .output()
        .expect("sh and tar");
    docker_ok(&["rm", &container]);
    assert!(export.status.success(), "docker export failed");
    String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|path| {
            path.trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

#[test]
fn the_image_is_nonroot_static_and_has_no_shell() {
    let image = image();
    let config = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        &image,
    ]);
    assert_eq!(config.trim(), r#"65532:65532 ["/secretsync"] ["run"]"#);

    let version = docker_ok(&["run", "--rm", "--read-only", &image, "--version"]);
    assert_eq!(
        version.trim(),
        concat!("secretsync ", env!("CARGO_PKG_VERSION"))
    );

    let shell = docker(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "/bin/sh",
        &image,
    ]);
    assert!(!shell.status.success(), "the image has /bin/sh");

    let files = files(&image);
    for expected in [
        "secretsync",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "etc/nsswitch.conf",
        "home/nonroot",
        "tmp",
    ] {
        assert!(files.contains(expected), "{expected} missing: {files:?}");
    }
    let shells: Vec<_> = files
        .iter()
        .filter(|path| {
            ["sh", "bash", "dash", "ash", "busybox"].contains(&path.rsplit('/').next().unwrap())
        })
        .collect();
    assert!(shells.is_empty(), "shells in the image: {shells:?}");
}

/// Removes the container when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test]
async fn the_image_syncs_a_secret_as_user_65532_on_a_read_only_root() {
    let t = TestContext::new("image").await;
    let vars = env_vars();
    let key = t.create_remote("db", "from-the-image").await;
    t.default_store("aws").await;
    let name = format!("secretsync-{}", t.namespace);
    let kubeconfig = format!("{}:/kubeconfig:ro", vars["KUBECONFIG"]);
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        &name,
        "--read-only",
        "--network",
        "host",
        "--volume",
        &kubeconfig,
        "--env",
        "KUBECONFIG=/kubeconfig",
    ];
    let aws: Vec<String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for variable in &aws {
        args.extend(["--env", variable]);
    }
    let image = image();
    args.extend([
        image.as_str(),
        "run",
        "--namespace",
        &t.namespace,
        "--operator-namespace",
        &t.namespace,
        "--metrics-address",
        "127.0.0.1:0",
    ]);
    let container = Container(docker_ok(&args).trim().to_string());
    t.sync_value("app", "aws", &key, "from-the-image").await;

    let processes = docker_ok(&["top", &container.0, "-o", "pid,uid"]);
    assert!(
        processes
            .lines()
            .skip(1)
            .all(|line| line.split_whitespace().nth(1) == Some("65532")),
        "{processes}"
    );
    let logs = docker(&["logs", &container.0]);
    let log =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert!(
        !log.contains("from-the-image"),
        "the value reached the log:\n{log}"
    );
}
