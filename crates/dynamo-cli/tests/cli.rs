//! The `dynamo` binary against a mock coordinator on loopback: what it prints, where,
//! and with which exit code.

#[path = "../../dynamo-client/tests/mock/mod.rs"]
mod mock;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use dynamo_core::wire::cluster::{ChangeKindName, ChangeProgress, ChangeSummary};
use dynamo_core::{ErrorCode, NodeId, RingEpoch};
use mock::{Mock, TOKEN};

/// Every run of the binary finishes within this.
const WAIT: Duration = Duration::from_secs(30);

/// What a run of the binary left behind.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("utf-8 stdout")
    }
}

/// Runs `dynamo` with `args` and, if given, `stdin`, isolated from the caller's
/// `DYNAMO_*` environment.
async fn dynamo(args: Vec<String>, stdin: Option<Vec<u8>>) -> Run {
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dynamo"))
            .args(&args)
            .env_remove("DYNAMO_ENDPOINT")
            .env_remove("DYNAMO_TOKEN")
            .env_remove("DYNAMO_DATA_DIR")
            .env_remove("DYNAMO_TIMEOUT_MS")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dynamo");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(&input).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait for dynamo");
        Run {
            code: out.status.code().expect("exited, not killed"),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    });
    tokio::time::timeout(WAIT, run)
        .await
        .expect("dynamo finished in time")
        .expect("join")
}

/// The connection flags for `mock`, then `rest`.
fn args(mock: &Mock, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--endpoint",
        &mock.url(),
        "--token",
        TOKEN,
        "--timeout-ms",
        "5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

// Goal: `put` then `get` round-trips the value: put prints the new context on stdout,
// get prints exactly the value's bytes on stdout and the context on stderr.
#[tokio::test]
async fn put_then_get_prints_the_value() {
    let mock = Mock::start().await;
    let put = dynamo(args(&mock, &["put", "users", "alice", "hello world"]), None).await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let context = put.stdout_text().trim().to_owned();
    assert!(!context.is_empty());
    assert_eq!(mock.state.values("users", "alice"), vec![b"hello world".to_vec()]);

    let get = dynamo(args(&mock, &["get", "users", "alice"]), None).await;
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(get.stdout, b"hello world", "the value, byte for byte");
    assert!(
        get.stderr.contains(&format!("context: {context}")),
        "{}",
        get.stderr
    );

    let only_context = dynamo(args(&mock, &["get", "users", "alice", "--context"]), None).await;
    assert_eq!(only_context.stdout_text().trim(), context);
}

// Goal: a value can come from stdin or a file, as bytes with the given content type,
// and a write with `--context` sends it.
#[tokio::test]
async fn put_reads_stdin_and_files_and_sends_the_context() {
    let mock = Mock::start().await;
    let binary = vec![0u8, 159, 146, 150];
    let run = dynamo(args(&mock, &["put", "b", "k"]), Some(binary.clone())).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mock.state.values("b", "k"), vec![binary]);
    let content_type = mock.state.last().headers.get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    let context = run.stdout_text().trim().to_owned();

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("v.json");
    std::fs::write(&file, br#"{"a":1}"#).expect("write file");
    let path = file.to_str().expect("utf-8 path");
    let run = dynamo(
        args(
            &mock,
            &[
                "put",
                "b",
                "k",
                "--file",
                path,
                "--content-type",
                "application/json",
                "--context",
                &context,
            ],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        mock.state.values("b", "k"),
        vec![br#"{"a":1}"#.to_vec()],
        "the context replaced the value"
    );
    let sent = mock.state.last();
    assert_eq!(
        sent.headers.get("x-dynamo-context").and_then(|v| v.to_str().ok()),
        Some(context.as_str())
    );
}

// Goal: siblings are printed readably: a count, then per sibling its index, content
// type, last-modified and value (text when UTF-8, base64 otherwise); the context on
// stderr; `--json` prints the API's envelope.
#[tokio::test]
async fn siblings_are_printed_readably() {
    let mock = Mock::start().await;
    mock.state.seed("b", "k", b"plain text", "text/plain");
    mock.state
        .seed("b", "k", &[0, 255, 1], "application/octet-stream");
    let run = dynamo(args(&mock, &["get", "b", "k"]), None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = run.stdout_text();
    assert!(out.starts_with("2 siblings"), "{out}");
    assert!(
        out.contains("[1] content-type: text/plain  last-modified: 2023-11-14T22:13:20.000Z  value (text, 10 bytes):\n  plain text\n"),
        "{out}"
    );
    assert!(
        out.contains("[2] content-type: application/octet-stream  last-modified: 2023-11-14T22:13:21.000Z  value (base64, 3 bytes):\n  AP8B\n"),
        "{out}"
    );
    assert!(run.stderr.contains("context: "), "{}", run.stderr);

    let json = dynamo(args(&mock, &["get", "b", "k", "--json"]), None).await;
    let envelope: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(envelope["siblings"].as_array().map(Vec::len), Some(2));
    assert_eq!(envelope["siblings"][1]["value"], "AP8B");
}

// Goal: an API error exits with 1 and prints `error: <code>: <message>` on stderr, with
// nothing on stdout.
#[tokio::test]
async fn an_api_error_exits_1_and_prints_the_code() {
    let mock = Mock::start().await;
    mock.state.fail_next(ErrorCode::InvalidQuorum, 1);
    let run = dynamo(args(&mock, &["put", "b", "k", "v", "--w", "9"]), None).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .starts_with("error: invalid_quorum: scripted failure\n"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("request id: mock-request"), "{}", run.stderr);
    assert!(mock.state.last().uri.ends_with("?w=9"));

    let wrong_token = dynamo(
        vec![
            "--endpoint".into(),
            mock.url(),
            "--token".into(),
            "nope".into(),
            "get".into(),
            "b".into(),
            "k".into(),
        ],
        None,
    )
    .await;
    assert_eq!(wrong_token.code, 1);
    assert!(
        wrong_token.stderr.starts_with("error: unauthorized: "),
        "{}",
        wrong_token.stderr
    );
}

// Goal: a key without a value exits with 1 and `not_found`. `delete` without
// `--context` reads first and deletes what it saw (a blind delete would leave the value
// visible), and the tombstone's context is still shown so a write can supersede it.
#[tokio::test]
async fn a_missing_key_exits_1_with_not_found() {
    let mock = Mock::start().await;
    let run = dynamo(args(&mock, &["get", "b", "nothing"]), None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: not_found: no value under b/nothing"),
        "{}",
        run.stderr
    );

    dynamo(args(&mock, &["put", "b", "gone", "v"]), None).await;
    let deleted = dynamo(args(&mock, &["delete", "b", "gone"]), None).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let sent = mock.state.last();
    assert_eq!(sent.method, "DELETE");
    assert!(
        sent.headers.contains_key("x-dynamo-context"),
        "the delete carries the read's context"
    );
    assert!(mock.state.values("b", "gone").is_empty());
    let run = dynamo(args(&mock, &["get", "b", "gone"]), None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("context: "), "{}", run.stderr);
}

// Goal: without `--token` or `DYNAMO_TOKEN`, the token is read from
// `<data-dir>/root-token` (trailing newline and all); with no such file the run is a
// usage error (exit 2) that names the file.
#[tokio::test]
async fn a_missing_token_is_read_from_the_data_dir() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("root-token"), format!("{TOKEN}\n")).expect("write token");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_owned();
    let run = dynamo(
        vec![
            "--endpoint".into(),
            mock.url(),
            "--data-dir".into(),
            data_dir,
            "put".into(),
            "b".into(),
            "k".into(),
            "v".into(),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let auth = mock.state.last().headers.get("authorization").cloned();
    assert_eq!(
        auth.as_ref().and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let data_dir = empty.path().to_str().expect("utf-8 path").to_owned();
    let run = dynamo(
        vec![
            "--endpoint".into(),
            mock.url(),
            "--data-dir".into(),
            data_dir,
            "get".into(),
            "b".into(),
            "k".into(),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("root-token"), "{}", run.stderr);
}

// Goal: usage errors (a missing argument, conflicting value sources) exit with 2 before
// anything is sent.
#[tokio::test]
async fn usage_errors_exit_2() {
    let mock = Mock::start().await;
    for rest in [
        &["get", "b"][..],
        &["put", "b", "k", "v", "--file", "f"],
        &["bucket", "set", "b"],
        &["ring", "--bucket", "b"],
        &["token", "create", "--buckets", "*", "--permissions", "root"],
    ] {
        let run = dynamo(args(&mock, rest), None).await;
        assert_eq!(run.code, 2, "{rest:?}: {}", run.stderr);
    }
    assert!(mock.state.requests().is_empty());
}

// Goal: bucket, cluster, ring and token commands print readable results from the API.
#[tokio::test]
async fn admin_commands_print_readable_results() {
    let mock = Mock::start().await;
    let run = dynamo(
        args(
            &mock,
            &["bucket", "set", "users", "--r", "1", "--conflict", "lww"],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = run.stdout_text();
    assert!(
        out.contains("r             1\n") && out.contains("conflict      lww\n"),
        "{out}"
    );

    let run = dynamo(args(&mock, &["cluster"]), None).await;
    let out = run.stdout_text();
    assert!(out.starts_with("ring epoch: 7\n"), "{out}");
    assert!(out.contains("node-b  down"), "{out}");

    let run = dynamo(args(&mock, &["ring", "--bucket", "b", "--key", "k"]), None).await;
    assert!(
        run.stdout_text().contains("preference list: node-a, node-b\n"),
        "{}",
        run.stdout_text()
    );
    let run = dynamo(args(&mock, &["ring"]), None).await;
    assert!(
        run.stdout_text().contains("node-a  2           50.0%"),
        "{}",
        run.stdout_text()
    );

    let run = dynamo(
        args(
            &mock,
            &[
                "token",
                "create",
                "--buckets",
                "b1,b2",
                "--permissions",
                "read,write",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = run.stdout_text();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .to_owned();
    assert!(out.contains("token: secret-"), "{out}");
    let list = dynamo(args(&mock, &["token", "list"]), None).await;
    assert!(
        list.stdout_text().contains(&format!("{id}  b1,b2    read,write")),
        "{}",
        list.stdout_text()
    );
    let deleted = dynamo(args(&mock, &["token", "delete", &id]), None).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let again = dynamo(args(&mock, &["token", "delete", &id]), None).await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.starts_with("error: token_not_found: "),
        "{}",
        again.stderr
    );
}

/// A membership change in progress, as `GET /v1/cluster` shows it.
fn change(
    kind: ChangeKindName,
    node: &str,
    replacement: Option<&str>,
    phase: &str,
    done: u64,
    bytes: u64,
) -> Option<ChangeProgress> {
    let id = |s: &str| NodeId::new(s).expect("node id");
    Some(ChangeProgress {
        change: ChangeSummary {
            kind,
            node: id(node),
            replacement: replacement.map(id),
            phase: phase.into(),
            epoch: RingEpoch(8),
            failed: None,
        },
        partitions_total: 4,
        partitions_done: done,
        objects: done * 10,
        bytes,
        stuck: None,
    })
}

/// How many `GET /v1/cluster` reached the mock.
fn cluster_polls(mock: &Mock) -> usize {
    mock.state
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri == "/v1/cluster")
        .count()
}

// Goal: `cluster replace --wait` sends the replace, follows the change poll by poll
// through both phases until the view shows it gone with its ring published, then prints
// the one-line result and the view, and exits 0. Method: the mock reports the change for
// three polls (copy, copy, catch-up at the new epoch), then none; stderr is a pipe, so
// progress comes as plain lines.
#[tokio::test]
async fn replace_wait_follows_the_change_until_it_is_done() {
    let mock = Mock::start().await;
    let replace = |phase, done, bytes| {
        change(
            ChangeKindName::Replace,
            "node-b",
            Some("node-d"),
            phase,
            done,
            bytes,
        )
    };
    mock.state.script_cluster([
        (RingEpoch(7), replace("copy", 0, 0)),
        (RingEpoch(7), replace("copy", 2, 1 << 20)),
        (RingEpoch(8), replace("catch_up", 3, 2 << 20)),
        (RingEpoch(8), None),
    ]);
    let run = dynamo(
        args(
            &mock,
            &[
                "cluster",
                "replace",
                "node-b",
                "--node-id",
                "node-d",
                "--address",
                "http://10.0.0.4:7100",
                "--wait",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("node-d is replacing node-b\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("replace of node-b by node-d (ring epoch 8): copy, 0/4 partitions, 0 B copied\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("node-d took over from node-b (ring epoch 8)\n"),
        "{}",
        run.stderr
    );
    // Each scripted view was asked for, and the last (no change) shown at the end.
    assert!(cluster_polls(&mock) >= 4, "{}", cluster_polls(&mock));
    let out = run.stdout_text();
    assert!(out.starts_with("ring epoch: 8\n"), "{out}");
    assert!(out.contains("\nchange: none\n"), "{out}");
    assert!(out.contains("node-d  joining"), "{out}");
}

// Goal: `cluster join --wait` exits 1 when the change fails, with the ring service's
// reason and the commands that retry or abort it, and prints no view. Method: the mock
// reports the join running, then failed in its copy phase (and failed for good).
#[tokio::test]
async fn join_wait_exits_1_when_the_change_fails() {
    let mock = Mock::start().await;
    let running = change(ChangeKindName::Join, "node-c", None, "copy", 1, 512);
    let mut failed = running.clone();
    if let Some(p) = failed.as_mut() {
        p.change.failed = Some("copies into node-c failed 5 times".into());
        p.stuck = p.change.failed.clone();
    }
    mock.state
        .script_cluster([(RingEpoch(7), running), (RingEpoch(7), failed)]);
    let run = dynamo(
        args(
            &mock,
            &["cluster", "join", "node-c", "http://10.0.0.9:7100", "--wait"],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error: the join of node-c failed: copies into node-c failed 5 times."),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`dynamo cluster retry --wait`") && run.stderr.contains("`dynamo cluster abort`"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("/internal/"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout_text());
}

/// `change` failed with `reason`, as the ring service shows a change whose copy
/// exhausted its attempts.
fn failed(change: Option<ChangeProgress>, reason: &str) -> Option<ChangeProgress> {
    change.map(|mut p| {
        p.change.failed = Some(reason.into());
        p.stuck = Some(reason.into());
        p
    })
}

/// The replace of node-b by node-d in `phase`, `done` of 4 partitions copied.
fn replace_of_b(phase: &str, done: u64) -> Option<ChangeProgress> {
    change(
        ChangeKindName::Replace,
        "node-b",
        Some("node-d"),
        phase,
        done,
        done << 20,
    )
}

// Goal: `cluster retry --wait` posts the retry, names the change it runs again, follows
// it through both phases until its ring is published, then prints the one-line result
// and the view, and exits 0. Method: the mock shows the replace failed; the retry moves
// its script on to the change running (copy, catch-up at the new epoch), then none.
#[tokio::test]
async fn retry_wait_follows_the_retried_change_until_it_is_done() {
    let mock = Mock::start().await;
    mock.state.script_cluster([
        (RingEpoch(7), failed(replace_of_b("copy", 1), "5 attempts failed")),
        (RingEpoch(7), replace_of_b("copy", 1)),
        (RingEpoch(8), replace_of_b("catch_up", 3)),
        (RingEpoch(8), None),
    ]);
    let run = dynamo(args(&mock, &["cluster", "retry", "--wait"]), None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let retries: Vec<_> = mock
        .state
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.uri == "/v1/cluster/change/retry")
        .collect();
    assert_eq!(retries.len(), 1, "one retry was sent");
    assert!(
        run.stderr
            .starts_with("the replace of node-b by node-d runs again\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("replace of node-b by node-d (ring epoch 8): copy, 1/4 partitions, 1.00 MiB copied\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("node-d took over from node-b (ring epoch 8)\n"),
        "{}",
        run.stderr
    );
    let out = run.stdout_text();
    assert!(out.starts_with("ring epoch: 8\n"), "{out}");
    assert!(out.contains("\nchange: none\n"), "{out}");
}

// Goal: `cluster retry --wait` exits 1 when the retried change fails again in its
// catch-up phase, saying that its ring is published and only a retry is left (no abort).
#[tokio::test]
async fn retry_wait_exits_1_when_the_change_fails_again_after_the_publish() {
    let mock = Mock::start().await;
    mock.state.script_cluster([
        (
            RingEpoch(8),
            failed(replace_of_b("catch_up", 1), "node-a did not answer"),
        ),
        (RingEpoch(8), replace_of_b("catch_up", 2)),
        (
            RingEpoch(8),
            failed(replace_of_b("catch_up", 2), "node-a did not answer"),
        ),
    ]);
    let run = dynamo(args(&mock, &["cluster", "retry", "--wait"]), None).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: the replace of node-b by node-d failed: node-a did not answer. Its new ring is already \
             published, so it can only go forward: `dynamo cluster retry --wait`"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("dynamo cluster abort"), "{}", run.stderr);
}

// Goal: `cluster abort` posts the abort and exits 0, saying the ring stays at its epoch,
// and prints the view without the change (the replacing node gone, the replaced one up).
#[tokio::test]
async fn abort_undoes_the_change_and_shows_the_view() {
    let mock = Mock::start().await;
    mock.state
        .script_cluster([(RingEpoch(7), failed(replace_of_b("copy", 1), "5 attempts failed"))]);
    let replace = dynamo(
        args(
            &mock,
            &[
                "cluster",
                "replace",
                "node-b",
                "--node-id",
                "node-d",
                "--address",
                "http://10.0.0.4:7100",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(replace.code, 0, "{}", replace.stderr);

    let run = dynamo(args(&mock, &["cluster", "abort"]), None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = mock.state.requests();
    assert!(
        seen.iter()
            .any(|r| r.method == "POST" && r.uri == "/v1/cluster/change/abort"),
        "the abort was sent"
    );
    assert_eq!(
        run.stderr,
        "the membership change is aborted; the ring stays at epoch 7\n"
    );
    let out = run.stdout_text();
    assert!(out.starts_with("ring epoch: 7\n"), "{out}");
    assert!(out.contains("\nchange: none\n"), "{out}");
    assert!(!out.contains("node-d"), "{out}");
    assert!(out.contains("node-b  up"), "{out}");
}

// Goal: the controls' refusals exit 1 with the server's code and reason: an abort once
// the new ring is published, a retry of a change that has not failed, either with no
// change in progress.
#[tokio::test]
async fn refused_retries_and_aborts_exit_1_with_the_reason() {
    let mock = Mock::start().await;
    mock.state
        .script_cluster([(RingEpoch(8), replace_of_b("catch_up", 2))]);
    let run = dynamo(args(&mock, &["cluster", "abort"]), None).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "error: membership_conflict: the new ring is already published; the change can only be retried"
        ),
        "{}",
        run.stderr
    );
    let run = dynamo(args(&mock, &["cluster", "retry"]), None).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: membership_conflict: the membership change is running; nothing to retry"),
        "{}",
        run.stderr
    );
    mock.state.script_cluster([(RingEpoch(8), None)]);
    for control in ["retry", "abort"] {
        let run = dynamo(args(&mock, &["cluster", control]), None).await;
        assert_eq!(run.code, 1, "{control}: {}", run.stderr);
        assert!(
            run.stderr
                .starts_with("error: membership_conflict: no membership change is in progress"),
            "{control}: {}",
            run.stderr
        );
    }
}

// Goal: `cluster decommission --wait` exits 1 when the change disappears without its
// ring being published (it was aborted). Method: the mock reports the change once, then
// no change at the old epoch.
#[tokio::test]
async fn decommission_wait_exits_1_when_the_change_is_aborted() {
    let mock = Mock::start().await;
    mock.state.script_cluster([
        (
            RingEpoch(7),
            change(ChangeKindName::Decommission, "node-a", None, "copy", 0, 0),
        ),
        (RingEpoch(7), None),
    ]);
    let run = dynamo(
        args(&mock, &["cluster", "decommission", "node-a", "--wait"]),
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: the decommission of node-a ended without publishing ring epoch 8: it was aborted"
        ),
        "{}",
        run.stderr
    );
}

// Goal: `--wait` gives up after `--wait-timeout` with exit 1, saying where the change
// stood, while the change itself goes on. Method: the mock reports the change running
// for ever; the timeout is one second.
#[tokio::test]
async fn wait_gives_up_after_its_timeout() {
    let mock = Mock::start().await;
    mock.state.script_cluster([(
        RingEpoch(7),
        change(ChangeKindName::Join, "node-c", None, "copy", 2, 0),
    )]);
    let run = dynamo(
        args(
            &mock,
            &[
                "cluster",
                "join",
                "node-c",
                "http://10.0.0.9:7100",
                "--wait",
                "--wait-timeout",
                "1",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: the join of node-c is still running after 1 s (join of node-c (ring epoch 8): copy, 2/4 partitions"
        ),
        "{}",
        run.stderr
    );
}

// Goal: a poll that fails with a transient error (after the client's own retries) does
// not end `--wait`: it asks again and still sees the change through. Method: the mock
// answers the first eight cluster polls `503 overloaded` (two failed polls after the
// client's three retries each), then reports the change done.
#[tokio::test]
async fn wait_asks_again_after_a_transient_failure() {
    let mock = Mock::start().await;
    mock.state.script_cluster([
        (
            RingEpoch(7),
            change(ChangeKindName::Join, "node-c", None, "copy", 0, 0),
        ),
        (RingEpoch(8), None),
    ]);
    mock.state.fail_cluster_polls(ErrorCode::Overloaded, 8);
    let run = dynamo(
        args(
            &mock,
            &["cluster", "join", "node-c", "http://10.0.0.9:7100", "--wait"],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("node-c is a member (ring epoch 8)\n"),
        "{}",
        run.stderr
    );
    // The eight refused, then at least the one that showed the change done.
    assert!(cluster_polls(&mock) >= 9, "{}", cluster_polls(&mock));
}

// Goal: `get` shows the ETag (stderr, `--etag` alone on stdout, `--json`); `put
// --if-match` writes only over that ETag and `--if-absent` only over nothing, each
// exiting 1 with `precondition_failed` otherwise; `delete --if-match` likewise.
#[tokio::test]
async fn conditional_writes_follow_the_etag() {
    let mock = Mock::start().await;
    dynamo(args(&mock, &["put", "b", "k", "v1"]), None).await;
    let get = dynamo(args(&mock, &["get", "b", "k"]), None).await;
    assert!(get.stderr.contains("etag: \""), "{}", get.stderr);
    let etag = dynamo(args(&mock, &["get", "b", "k", "--etag"]), None).await;
    assert_eq!(etag.code, 0, "{}", etag.stderr);
    let e1 = etag.stdout_text().trim().to_owned();
    assert!(get.stderr.contains(&format!("etag: {e1}")), "{}", get.stderr);
    let json = dynamo(args(&mock, &["get", "b", "k", "--json"]), None).await;
    let env: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(env["etag"].as_str(), Some(e1.as_str()));

    let put = dynamo(args(&mock, &["put", "b", "k", "v2", "--if-match", &e1]), None).await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    assert_eq!(mock.state.last().headers["if-match"], e1.as_str());
    assert!(put.stderr.contains("etag: "), "{}", put.stderr);
    let stale = dynamo(args(&mock, &["put", "b", "k", "v3", "--if-match", &e1]), None).await;
    assert_eq!(stale.code, 1);
    assert!(stale.stderr.contains("precondition_failed"), "{}", stale.stderr);
    assert_eq!(mock.state.values("b", "k"), vec![b"v2".to_vec()]);
    let stale = dynamo(args(&mock, &["delete", "b", "k", "--if-match", &e1]), None).await;
    assert_eq!(stale.code, 1, "{}", stale.stderr);
    assert_eq!(mock.state.values("b", "k"), vec![b"v2".to_vec()]);

    let create = dynamo(args(&mock, &["put", "b", "new", "n", "--if-absent"]), None).await;
    assert_eq!(create.code, 0, "{}", create.stderr);
    assert_eq!(mock.state.last().headers["if-none-match"], "*");
    let again = dynamo(args(&mock, &["put", "b", "new", "m", "--if-absent"]), None).await;
    assert_eq!(again.code, 1);
    assert_eq!(mock.state.values("b", "new"), vec![b"n".to_vec()]);

    // The ETag without its quotes (a shell ate them) is quoted again.
    let e2 = dynamo(args(&mock, &["get", "b", "k", "--etag"]), None)
        .await
        .stdout_text();
    let bare = e2.trim().trim_matches('"').to_owned();
    let del = dynamo(args(&mock, &["delete", "b", "k", "--if-match", &bare]), None).await;
    assert_eq!(del.code, 0, "{}", del.stderr);
    assert!(mock.state.values("b", "k").is_empty());
    let both = dynamo(
        args(&mock, &["put", "b", "k", "v", "--if-match", &bare, "--if-absent"]),
        None,
    )
    .await;
    assert_eq!(both.code, 2, "{}", both.stderr);
}

/// A cursor from now on the mock's feed of `bucket`, as a watcher's first call gets it.
async fn feed_cursor_now(mock: &Mock, bucket: &str) -> dynamo_client::FeedCursor {
    let client = dynamo_client::Client::new(&mock.url(), TOKEN).expect("client");
    client
        .feed_page(bucket, &dynamo_client::FeedOptions::new())
        .await
        .expect("page from now")
        .cursor
}

/// The `cursor` parameter of every feed poll the mock saw (the page from now has none).
fn feed_poll_cursors(mock: &Mock) -> Vec<String> {
    mock.state
        .requests()
        .iter()
        .filter(|r| r.uri.starts_with("/v1/feed/"))
        .filter_map(|r| {
            let query = r.uri.split_once('?')?.1;
            query
                .split('&')
                .find_map(|p| p.strip_prefix("cursor="))
                .map(str::to_owned)
        })
        .collect()
}

/// The cursor `dynamo watch` printed on exit (`cursor: <C>` on stderr).
fn printed_cursor(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("cursor: "))
        .unwrap_or_else(|| panic!("no cursor on stderr: {}", run.stderr))
        .to_owned()
}

// Goal: `dynamo list` prints every live key once, one per line, in byte order,
// following the listing across pages, through a page that holds no live key. Method: 250
// keys with the middle 100 deleted, listed with the server's default page of 100: the
// pages are [k000..k099] [] [k200..k249].
#[tokio::test]
async fn list_prints_keys_one_per_line_across_pages() {
    let mock = Mock::start().await;
    for i in 0..250 {
        mock.state.seed("b", &format!("k{i:03}"), b"v", "text/plain");
    }
    let client = dynamo_client::Client::new(&mock.url(), TOKEN).expect("client");
    for i in 100..200 {
        let key = format!("k{i:03}");
        let read = client.get("b", &key).await.expect("get").expect("found");
        client
            .delete("b", &key, Some(&read.context))
            .await
            .expect("delete");
    }
    let pages_before = list_pages(&mock);

    let run = dynamo(args(&mock, &["list", "b"]), None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected: String = (0..100).chain(200..250).map(|i| format!("k{i:03}\n")).collect();
    assert_eq!(run.stdout_text(), expected);
    assert_eq!(
        list_pages(&mock) - pages_before,
        3,
        "three pages, the middle one empty"
    );
}

// Goal: `dynamo list` narrows with `--prefix`, resumes with `--start-after`, stops after
// `--limit` keys (asking for a page of that size), and with `--json` prints JSON Lines.
#[tokio::test]
async fn list_takes_a_prefix_a_start_and_a_limit() {
    let mock = Mock::start().await;
    for key in ["a/1", "a/2", "a/3", "b/1"] {
        mock.state.seed("bk", key, b"v", "text/plain");
    }
    let run = dynamo(
        args(&mock, &["list", "bk", "--prefix", "a/", "--start-after", "a/1"]),
        None,
    )
    .await;
    assert_eq!(run.stdout_text(), "a/2\na/3\n");
    let limited = dynamo(args(&mock, &["list", "bk", "--limit", "2", "--json"]), None).await;
    assert_eq!(limited.code, 0, "{}", limited.stderr);
    assert_eq!(limited.stdout_text(), "\"a/1\"\n\"a/2\"\n");
    assert!(
        mock.state.last().uri.contains("limit=2"),
        "{}",
        mock.state.last().uri
    );
}

/// How many listing pages the mock has answered.
fn list_pages(mock: &Mock) -> usize {
    mock.state
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.contains("?list"))
        .count()
}

// Goal: `dynamo crdt incr` prints the counter's new value as JSON on stdout, its context
// and ETag on stderr, and adds the given amount (negative subtracts).
#[tokio::test]
async fn crdt_incr_prints_the_new_value() {
    let mock = Mock::start().await;
    mock.state
        .crdt_bucket("hits", dynamo_core::crdt::CrdtType::Counter);
    let first = dynamo(args(&mock, &["crdt", "incr", "hits", "home"]), None).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout_text().trim(), "1");
    assert!(first.stderr.contains("context: "), "{}", first.stderr);
    assert!(first.stderr.contains("etag: "), "{}", first.stderr);

    let more = dynamo(args(&mock, &["crdt", "incr", "hits", "home", "5"]), None).await;
    assert_eq!(more.stdout_text().trim(), "6");
    let less = dynamo(
        args(&mock, &["crdt", "incr", "hits", "home", "-2", "--json"]),
        None,
    )
    .await;
    let shown: serde_json::Value = serde_json::from_slice(&less.stdout).expect("JSON");
    assert_eq!(shown["value"], 4);
    assert_eq!(shown["crdt_type"], "counter");
    assert_eq!(mock.state.crdt_value("hits", "home"), Some(serde_json::json!(4)));
}

// Goal: `dynamo watch --cursor C` prints the changes after C, one line each (`<key>
// put|delete`), stops after `--max-changes`, and prints on stderr the cursor that
// resumes without skipping what was not printed; resuming from it with `--json` prints
// the rest, each change with its cursor. Method: the three changes come in one page and
// the first watch stops inside it, so its cursor resumes before that page (at least
// once: the printed part of the page comes again).
#[tokio::test]
async fn watch_prints_changes_and_the_cursor_to_resume_from() {
    let mock = Mock::start().await;
    let c0 = feed_cursor_now(&mock, "b").await;
    mock.state.seed("b", "k1", b"v", "text/plain");
    mock.state.seed("elsewhere", "x", b"v", "text/plain");
    mock.state.seed("b", "k2", b"v", "text/plain");
    let del = dynamo(args(&mock, &["delete", "b", "k1"]), None).await;
    assert_eq!(del.code, 0, "{}", del.stderr);

    let run = dynamo(
        args(
            &mock,
            &["watch", "b", "--cursor", c0.as_str(), "--max-changes", "2"],
        ),
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), "k1 put\nk2 put\n");
    let resume = printed_cursor(&run);

    let rest = dynamo(
        args(
            &mock,
            &["watch", "b", "--cursor", &resume, "--max-changes", "3", "--json"],
        ),
        None,
    )
    .await;
    assert_eq!(rest.code, 0, "{}", rest.stderr);
    let lines: Vec<serde_json::Value> = rest
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let seen: Vec<(&str, bool)> = lines
        .iter()
        .map(|l| (l["key"].as_str().expect("key"), l["deleted"] == true))
        .collect();
    assert_eq!(seen, [("k1", false), ("k2", false), ("k1", true)]);
    assert!(
        lines
            .iter()
            .all(|l| l["context"].as_str().is_some_and(|c| !c.is_empty()))
    );
    assert_eq!(
        lines[2]["cursor"].as_str(),
        Some(printed_cursor(&rest).as_str()),
        "the last change's cursor is the one printed on exit"
    );
    assert_ne!(printed_cursor(&rest), resume, "past the whole page now");
}

// Goal: `dynamo watch` without a cursor starts from now (an earlier write is not
// printed, a later one is), and an expired cursor exits 1 with `cursor_expired` and the
// hint to start again, not a cursor.
#[tokio::test]
async fn watch_starts_from_now_and_stops_on_an_expired_cursor() {
    let mock = Mock::start().await;
    mock.state.seed("b", "before", b"v", "text/plain");
    let watch = tokio::spawn(dynamo(
        args(&mock, &["watch", "b", "--from-now", "--max-changes", "1"]),
        None,
    ));
    // Write once the watcher polls with its cursor from now.
    while feed_poll_cursors(&mock).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.state.seed("b", "after", b"v", "text/plain");
    let run = watch.await.expect("join");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), "after put\n");

    let c0 = feed_cursor_now(&mock, "b").await;
    mock.state.seed("b", "later", b"v", "text/plain");
    mock.state.expire_feed_cursors();
    let expired = dynamo(args(&mock, &["watch", "b", "--cursor", c0.as_str()]), None).await;
    assert_eq!(expired.code, 1, "{}", expired.stderr);
    assert!(
        expired.stderr.contains("error: cursor_expired"),
        "{}",
        expired.stderr
    );
    assert!(expired.stderr.contains("without --cursor"), "{}", expired.stderr);
    assert!(!expired.stderr.contains("cursor: "), "{}", expired.stderr);

    let empty = dynamo(args(&mock, &["watch", "b", "--cursor", ""]), None).await;
    assert_eq!(empty.code, 2, "{}", empty.stderr);
}

// Goal: Ctrl-C (SIGINT) ends a watch that is waiting for changes cleanly: exit code 0,
// and the cursor it was polling with on stderr, to resume from.
#[tokio::test]
async fn watch_ends_cleanly_on_ctrl_c_with_the_cursor() {
    let mock = Mock::start().await;
    let child = Command::new(env!("CARGO_BIN_EXE_dynamo"))
        .args(args(&mock, &["watch", "b"]))
        .env_remove("DYNAMO_ENDPOINT")
        .env_remove("DYNAMO_TOKEN")
        .env_remove("DYNAMO_DATA_DIR")
        .env_remove("DYNAMO_TIMEOUT_MS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dynamo");
    // The watcher installs its signal handlers before its first request, so once it
    // polls with a cursor, SIGINT reaches the handler.
    tokio::time::timeout(WAIT, async {
        while feed_poll_cursors(&mock).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the watcher polled in time");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("dynamo stopped in time")
    .expect("join")
    .expect("wait for dynamo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty());
    let polled = feed_poll_cursors(&mock);
    assert_eq!(
        stderr.lines().find_map(|l| l.strip_prefix("cursor: ")),
        polled.last().map(String::as_str),
        "{stderr}"
    );
}
