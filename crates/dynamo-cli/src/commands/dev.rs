//! `dynamo dev`: a whole cluster on loopback in one command.
//!
//! Starts the ring service (three replicas of one Raft group by default, `--ring-replicas
//! 1` for one), the storage nodes and a coordinator as separate processes of the real
//! binaries (found beside `dynamo` itself), so any one of them can be killed or stopped as
//! in a real cluster. All data lives under one directory; started again on the same
//! directory, the cluster has the same data and the same root token. Ctrl-C stops
//! everything cleanly: the coordinator first, then the nodes, then the ring replicas.

use dynamo_core::signature::Role;
use dynamo_core::wire::cluster::{ClusterState, NodeRegistration};
use dynamo_core::wire::routes;
use dynamo_server::internal::InternalClient;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tokio::process::{Child, Command};

/// How long start-up steps may take before `dev` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each service may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of `dynamo dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub nodes: u16,
    /// Port of the coordinator (the public API).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port of the first ring-service replica; replica i listens on this + i.
    #[arg(long, default_value_t = 7000)]
    pub ring_port: u16,
    /// Replicas of the ring service (a Raft group: 3 tolerates the loss of one; 1 runs
    /// the single instance).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub ring_replicas: u16,
    /// Port of the first storage node; node i listens on this + i.
    #[arg(long, default_value_t = 7100)]
    pub storage_port: u16,
    /// Partition count Q (a power of two; fixed when the data directory is created).
    #[arg(long, default_value_t = 256)]
    pub partitions: u32,
    /// Default replicas per key.
    #[arg(long, default_value_t = 3)]
    pub n: u8,
    /// Default read quorum.
    #[arg(long, default_value_t = 2)]
    pub r: u8,
    /// Default write quorum.
    #[arg(long, default_value_t = 2)]
    pub w: u8,
    /// Storage durability: `sync` (fsync, group commit) or `buffered`.
    #[arg(long, default_value = "sync")]
    pub durability: String,
    /// The root token; default: `<data-dir>/root-token`, generated on first start.
    #[arg(long, env = "DYNAMO_ROOT_TOKEN", hide_env_values = true)]
    pub root_token: Option<String>,
    /// Run every hop over TLS, with a throw-away CA made at start (its certificate in
    /// `<data-dir>/tls/ca.pem`, for clients). Without it the cluster speaks plain HTTP on
    /// loopback.
    #[arg(long)]
    pub tls: bool,
}

/// Where, under the data directory, `dynamo dev --tls` writes its CA, certificate and key.
pub const TLS_DIR: &str = "tls";

/// How the services of a dev cluster are reached: the scheme of their URLs and, with
/// TLS, the files every service gets.
struct Transport {
    tls: Option<dynamo_tls::throwaway::TlsFiles>,
}

impl Transport {
    /// Makes a new throw-away CA and a certificate for loopback when `tls`.
    fn new(data_dir: &Path, tls: bool) -> anyhow::Result<Transport> {
        if !tls {
            return Ok(Transport { tls: None });
        }
        let dir = data_dir.join(TLS_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = dynamo_tls::throwaway::Ca::new("dynamo dev throw-away CA")?;
        Ok(Transport {
            tls: Some(ca.write_files(&dir)?),
        })
    }

    fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// The TLS flags of every service: its certificate, and the CA its clients trust.
    fn args(&self) -> Vec<String> {
        let Some(files) = &self.tls else {
            return Vec::new();
        };
        [
            ("--tls-cert-file", &files.cert),
            ("--tls-key-file", &files.key),
            ("--tls-ca-file", &files.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }

    /// A reqwest builder trusting the dev CA.
    fn http(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let tls = dynamo_tls::ClientTls::new(
            self.tls.as_ref().map(|f| f.ca.as_path()),
            dynamo_tls::DEFAULT_RELOAD,
        )?;
        Ok(reqwest::Client::builder().tls_backend_preconfigured(tls.config()))
    }
}

struct Service {
    name: String,
    child: Child,
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dynamo executable")?;
    let dir = exe.parent().context("the dynamo executable has no directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found beside dynamo: build every binary first (`make run` or `cargo build --release --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

fn root_token(args: &DevArgs, data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join(crate::cli::ROOT_TOKEN_FILE);
    if let Some(t) = &args.root_token {
        write_secret(&path, t)?;
        return Ok((t.clone(), path));
    }
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(t) = text.lines().next().map(str::trim).filter(|t| t.len() >= 16)
    {
        return Ok((t.to_owned(), path));
    }
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    write_secret(&path, &token)?;
    Ok((token, path))
}

/// A key file of the dev cluster, `<data-dir>/<name>`, generated on first start and kept
/// (contexts clients hold stay valid across restarts, and so do the services' keys).
fn key_file(data_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path)
        && dynamo_core::keys::KeyRing::parse(&text).is_ok()
    {
        return Ok(path);
    }
    let line = crate::commands::keygen::generate(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_secret(&path, &line)?;
    Ok(path)
}

/// Where `dynamo dev` keeps its coordinator's context keys.
pub const CONTEXT_KEY_FILE: &str = "context-key";
/// Where `dynamo dev` keeps the member keys every service holds.
pub const MEMBER_KEY_FILE: &str = "member-key";
/// Where `dynamo dev` keeps the control keys of the ring service and the coordinator
/// (storage nodes never get them).
pub const CONTROL_KEY_FILE: &str = "control-key";

/// The secret files of a dev cluster, each mode 0600 under the data directory.
struct Secrets {
    root_token: PathBuf,
    context_key: PathBuf,
    member_key: PathBuf,
    control_key: PathBuf,
}

impl Secrets {
    /// `--member-key-file <path>`, and `--control-key-file <path>` when `control`.
    fn key_args(&self, control: bool) -> Vec<String> {
        let mut args = vec!["--member-key-file".into(), self.member_key.display().to_string()];
        if control {
            args.extend([
                "--control-key-file".into(),
                self.control_key.display().to_string(),
            ]);
        }
        args
    }
}

fn write_secret(path: &Path, token: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(())
}

/// Starts `bin` as `name` with its own `flags` and those every service takes: the member
/// key (and the control key where `control`) and, with `--tls`, the TLS files.
fn spawn(
    name: &str,
    bin: &str,
    flags: &[String],
    secrets: &Secrets,
    transport: &Transport,
    control: bool,
    logs: &Path,
) -> anyhow::Result<Service> {
    let args: Vec<String> = flags
        .iter()
        .cloned()
        .chain(secrets.key_args(control))
        .chain(transport.args())
        .collect();
    let log = File::options()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .with_context(|| format!("opening the log of {name}"))?;
    let child = Command::new(binary(bin)?)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        // Ctrl-C in the terminal goes to the whole process group; the services must get
        // their SIGTERM from `dev` in order instead, so they live in their own group.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Service {
        name: name.to_owned(),
        child,
    })
}

async fn wait_ready(http: &InternalClient, svc: &mut Service, url: &str, logs: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = svc.child.try_wait()? {
            bail!(
                "{} exited during start-up ({status}); see {}",
                svc.name,
                logs.join(format!("{}.log", svc.name)).display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not become ready in time; see its log in {}",
                svc.name,
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn registration(id: &str, address: &str) -> anyhow::Result<NodeRegistration> {
    Ok(NodeRegistration {
        node_id: dynamo_core::NodeId::new(id).with_context(|| format!("node id {id:?}"))?,
        address: address.to_owned(),
        zone: None,
    })
}

async fn join_all(http: &InternalClient, ring_url: &str, nodes: &[(String, String)]) -> anyhow::Result<()> {
    for (id, address) in nodes {
        let resp = http
            .post(routes::url(ring_url, routes::ring::NODES))
            .json(&registration(id, address)?)
            .send()
            .await
            .context("joining a node")?;
        let status = resp.status();
        if !status.is_success() && status.as_u16() != 409 {
            bail!(
                "joining {id} failed: {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        // One membership change at a time: wait until this one is done.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let s: ClusterState = http
                .get(routes::url(ring_url, routes::ring::STATE))
                .query(&[("after", "0"), ("wait_ms", "0")])
                .send()
                .await?
                .json()
                .await?;
            let member = s
                .ring
                .as_ref()
                .is_some_and(|r| r.members().keys().any(|m| m.as_str() == id));
            let idle = s.handoffs.is_empty();
            if member && idle {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{id} did not join in time");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn stop(services: &mut Vec<Service>) {
    // Reverse start order: coordinator, nodes, ring service.
    while let Some(mut s) = services.pop() {
        if let Some(pid) = s.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(STOP_TIMEOUT, s.child.wait()).await {
            Ok(Ok(status)) => eprintln!("stopped {} ({status})", s.name),
            _ => {
                let _ = s.child.kill().await;
                eprintln!("killed {} (it did not stop in time)", s.name);
            }
        }
    }
}

/// Runs `dynamo dev` until Ctrl-C or SIGTERM.
///
/// # Errors
/// When a binary is missing, a port is taken, or a service fails to start; everything
/// started is stopped first.
pub async fn run(global: &GlobalArgs, args: &DevArgs) -> Result<(), CliError> {
    run_cluster(&global.data_dir, args)
        .await
        .map_err(|e| CliError::Local(format!("{e:#}")))
}

/// The port ranges the services take: the coordinator's port, the ring replicas' and the
/// storage nodes' runs. Overlapping ranges are refused before anything starts: a service
/// whose port another one holds cannot start, and the one holding it would answer its
/// readiness probe, so the cluster would only hang at the first join.
fn check_ports(args: &DevArgs) -> anyhow::Result<()> {
    let ranges = [
        ("the coordinator (--port)", args.port, 1u16),
        (
            "the ring replicas (--ring-port)",
            args.ring_port,
            args.ring_replicas,
        ),
        (
            "the storage nodes (--storage-port)",
            args.storage_port,
            args.nodes,
        ),
    ];
    for (what, first, count) in ranges {
        if u32::from(first) + u32::from(count) > 65_536 || first == 0 {
            bail!("{what} need {count} port(s) from {first}: past the last port or port 0");
        }
    }
    for (i, (a, fa, ca)) in ranges.iter().enumerate() {
        for (b, fb, cb) in &ranges[i + 1..] {
            let (ea, eb) = (u32::from(*fa) + u32::from(*ca), u32::from(*fb) + u32::from(*cb));
            if u32::from(*fa) < eb && u32::from(*fb) < ea {
                bail!(
                    "{a} take ports {fa}-{} and {b} {fb}-{}: they overlap; give ports that leave room for each",
                    ea - 1,
                    eb - 1
                );
            }
        }
    }
    Ok(())
}

async fn run_cluster(data_dir: &Path, args: &DevArgs) -> anyhow::Result<()> {
    check_ports(args)?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let (token, token_path) = root_token(args, data_dir)?;
    let secrets = Secrets {
        root_token: token_path.clone(),
        context_key: key_file(data_dir, CONTEXT_KEY_FILE)?,
        member_key: key_file(data_dir, MEMBER_KEY_FILE)?,
        control_key: key_file(data_dir, CONTROL_KEY_FILE)?,
    };
    // `dynamo dev` joins the nodes itself: it acts as the operator would, with the
    // control key.
    let control_keys = dynamo_core::keys::KeyRing::parse(&std::fs::read_to_string(&secrets.control_key)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", secrets.control_key.display()))?;
    let signer = dynamo_server::internal::Signer::new(&control_keys, Role::Control, "dev")?;
    let transport = Transport::new(data_dir, args.tls)?;
    let http =
        dynamo_server::internal::client(transport.http()?.timeout(Duration::from_secs(5)).build()?, signer);
    let mut services = Vec::new();
    let result = start(args, data_dir, &logs, &secrets, &transport, &http, &mut services).await;
    if let Err(e) = result {
        stop(&mut services).await;
        return Err(e);
    }
    let endpoint = transport.url(args.port);
    println!(
        "dynamo dev: {} storage nodes, {} ring-service replica(s) and a coordinator are up",
        args.nodes, args.ring_replicas
    );
    for s in &services {
        println!("  {:<12} pid {}", s.name, s.child.id().unwrap_or(0));
    }
    println!();
    println!("endpoint:   {endpoint}");
    println!("root token: {token}   (also in {})", token_path.display());
    println!("data:       {}   logs: {}", data_dir.display(), logs.display());
    let curl = match &transport.tls {
        Some(files) => {
            println!(
                "TLS:        on, every hop; throw-away CA in {} (made at this start)",
                files.ca.display()
            );
            format!("curl --cacert {}", files.ca.display())
        }
        None => {
            println!("TLS:        off: plain HTTP on loopback (`dynamo dev --tls` runs every hop over TLS)");
            "curl".to_owned()
        }
    };
    println!();
    println!("try:");
    println!(
        "  {curl} -X PUT -H \"Authorization: Bearer {token}\" -H 'Content-Type: text/plain' --data 'hello' {endpoint}/v1/kv/demo/greeting"
    );
    println!("  {curl} -H \"Authorization: Bearer {token}\" {endpoint}/v1/kv/demo/greeting");
    if transport.tls.is_some() {
        println!("  dynamo --endpoint {endpoint} get demo greeting");
    }
    println!();
    println!("ready; Ctrl-C stops the cluster");

    // The cluster is stopped even when the signal handlers could not be installed, so no
    // service outlives `dev`; the error is reported after.
    let interrupted = crate::commands::interrupted().await;
    eprintln!("stopping the cluster");
    stop(&mut services).await;
    interrupted.context("listening for Ctrl-C and SIGTERM")
}

async fn start(
    args: &DevArgs,
    data_dir: &Path,
    logs: &Path,
    secrets: &Secrets,
    transport: &Transport,
    http: &InternalClient,
    services: &mut Vec<Service>,
) -> anyhow::Result<()> {
    // Replica 0 keeps the single instance's directory, so a data directory from before
    // ring groups is migrated into the group on its first start.
    let ring_urls: Vec<String> = (0..args.ring_replicas)
        .map(|i| transport.url(args.ring_port + i))
        .collect();
    let replicas = ring_urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{i}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut rings = Vec::new();
    for (i, url) in ring_urls.iter().enumerate() {
        let name = match i {
            0 => "ring".to_owned(),
            i => format!("ring-{i}"),
        };
        let dir = data_dir.join(&name);
        let ring = spawn(
            &name,
            "dynamo-ring",
            &[
                "--listen".into(),
                format!("127.0.0.1:{}", args.ring_port + i as u16),
                "--data-dir".into(),
                dir.display().to_string(),
                "--partitions".into(),
                args.partitions.to_string(),
                "--n".into(),
                args.n.to_string(),
                "--replica-id".into(),
                i.to_string(),
                "--replicas".into(),
                replicas.clone(),
            ],
            secrets,
            transport,
            true,
            logs,
        )?;
        rings.push((ring, url.clone()));
    }
    // Started together: a replica of a group answers ready while it waits for the others.
    for (mut ring, url) in rings {
        let ready = wait_ready(http, &mut ring, &url, logs).await;
        services.push(ring);
        ready?;
    }
    let ring_url = ring_urls[0].clone();
    let ring_list = ring_urls.join(",");

    let mut members = Vec::new();
    for i in 0..args.nodes {
        let port = args.storage_port + i;
        let id = format!("node-{i}");
        let url = transport.url(port);
        let mut node = spawn(
            &id,
            "dynamo-storage",
            &[
                "--node-id".into(),
                id.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data_dir.join(&id).display().to_string(),
                "--partitions".into(),
                args.partitions.to_string(),
                "--ring-url".into(),
                ring_list.clone(),
                "--durability".into(),
                args.durability.clone(),
            ],
            secrets,
            transport,
            false,
            logs,
        )?;
        let ready = wait_ready(http, &mut node, &url, logs).await;
        services.push(node);
        ready?;
        members.push((id, url));
    }
    join_all(http, &ring_url, &members).await?;

    let coord_url = transport.url(args.port);
    let mut coord = spawn(
        "coordinator",
        "dynamo-coordinator",
        &[
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--ring-url".into(),
            ring_list,
            "--root-token-file".into(),
            secrets.root_token.display().to_string(),
            "--context-key-file".into(),
            secrets.context_key.display().to_string(),
            "--default-n".into(),
            args.n.to_string(),
            "--default-r".into(),
            args.r.to_string(),
            "--default-w".into(),
            args.w.to_string(),
        ],
        secrets,
        transport,
        true,
        logs,
    )?;
    let ready = wait_ready(http, &mut coord, &coord_url, logs).await;
    services.push(coord);
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        dev: DevArgs,
    }

    fn args(flags: &[&str]) -> DevArgs {
        Cmd::try_parse_from(std::iter::once("dev").chain(flags.iter().copied()))
            .expect("flags")
            .dev
    }

    #[test]
    fn overlapping_port_ranges_are_refused_before_anything_starts() {
        assert!(check_ports(&args(&[])).is_ok(), "the defaults");
        let e = check_ports(&args(&["--ring-port", "7000", "--storage-port", "7002"]))
            .expect_err("ring 7000-7002 and storage 7002-7004");
        assert!(
            e.to_string()
                .contains("the ring replicas (--ring-port) take ports 7000-7002 and the storage nodes (--storage-port) 7002-7004"),
            "{e}"
        );
        assert!(
            check_ports(&args(&["--port", "7101"])).is_err(),
            "the coordinator on node-1's port"
        );
        assert!(
            check_ports(&args(&[
                "--ring-port",
                "7000",
                "--ring-replicas",
                "1",
                "--storage-port",
                "7001"
            ]))
            .is_ok(),
            "one ring replica leaves 7001 free"
        );
        assert!(
            check_ports(&args(&["--storage-port", "65535"])).is_err(),
            "past the last port"
        );
    }
}
