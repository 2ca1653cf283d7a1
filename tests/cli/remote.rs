//! The shared remote cache against a real S3 server: moto's, started on
//! 127.0.0.1 for the test (scripts/python-extras.sh installs `moto[server]`).
//! Without moto the tests say so and pass, except under CI, where they fail.
use crate::common::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "dml-test";

/// A moto S3 server on a free loopback port, killed when dropped (also on a
/// failed assertion, which unwinds through the drop).
struct Moto {
    child: Option<Child>,
    port: u16,
}

impl Moto {
    /// Starts moto and creates the bucket; `None` (after a message) when moto
    /// is not installed and this is not CI.
    fn start() -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "moto_server cannot be started ({e}); scripts/python-extras.sh installs it (pip install \"moto[server]\")"
                );
                if std::env::var_os("CI").is_some() {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED: {msg}");
                return None;
            }
        };
        let moto = Moto {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on 127.0.0.1:{port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.python(&format!("s3.create_bucket(Bucket={BUCKET:?})"));
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs boto3 code against the server with `s3` bound to a client.
    fn python(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3 call failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dml --store STORE ARGS…` with this server as the remote.
    fn dml(&self, store: &Path, args: &[&str]) -> Command {
        let mut c = dml();
        c.env("DML_REMOTE", format!("s3://{BUCKET}/team"))
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .arg("--store")
            .arg(store)
            .args(args);
        c
    }

    fn ok(&self, store: &Path, args: &[&str]) -> Output {
        let out = self.dml(store, args).output().expect("dml runs");
        assert!(
            out.status.success(),
            "dml {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(id, status)` of each node of `dml run --json` output.
fn statuses(out: &Output) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    v["nodes"]
        .as_array()
        .expect("an array of nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn embeddings(store: &Path) -> Vec<u8> {
    let p: PathBuf = store.join("latest/tiny/embed/embeddings.arrow");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The tiny training run, sharing every stage (the decode cache included).
fn config(dir: &Path) -> String {
    let text = format!("{}\n[store]\nremote_skip = []\n", Config::tiny().train());
    write_config(dir, &text).to_str().unwrap().to_string()
}

#[test]
fn a_second_store_fetches_everything_a_corrupt_object_is_refused_and_a_dead_remote_is_a_warning() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let store = |n: &str| tmp.path().join(n);

    // Store A builds and uploads; large files go up in parts (threshold lowered).
    let a = moto
        .dml(&store("a"), &["run", &cfg, "--json"])
        .env("DML_REMOTE_MULTIPART_AT", "4096")
        .output()
        .unwrap();
    assert!(a.status.success(), "{}", stderr(&a));
    let nodes = statuses(&a);
    assert!(nodes.iter().all(|(_, s)| s == "ran"), "{nodes:?}");
    assert!(stderr(&a).contains("to the remote cache"), "{}", stderr(&a));
    let listed =
        String::from_utf8_lossy(&moto.ok(&store("a"), &["remote", "ls"]).stdout).into_owned();
    for (id, _) in &nodes {
        let stage = id.split([':', '[']).next().unwrap();
        assert!(listed.contains(stage), "{stage} not in:\n{listed}");
    }

    // An empty store B with the same remote: every stage is `remote`, nothing builds.
    let dry = moto.ok(&store("b"), &["run", &cfg, "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    for n in plan.as_array().unwrap() {
        assert_eq!(n["status"], "remote", "{n}");
    }
    let b = moto.ok(&store("b"), &["run", &cfg, "--json"]);
    let fetched = statuses(&b);
    assert!(fetched.iter().all(|(_, s)| s == "fetched"), "{fetched:?}");
    assert_eq!(embeddings(&store("a")), embeddings(&store("b")));
    // Fetched artifacts are whole artifacts: a verifying rerun finds them all cached.
    let again = moto.ok(&store("b"), &["run", &cfg, "--json", "--verify"]);
    assert!(statuses(&again).iter().all(|(_, s)| s == "cached"));

    // Corrupt embed's embeddings on the server: refused, named, rebuilt, same bytes.
    let embed_manifest = latest_manifest(&store("a"), "tiny", "embed");
    let key = embed_manifest["key"].as_str().unwrap().to_string();
    let hash = file_hash(&embed_manifest, "embeddings.arrow");
    let object = format!("team/objects/embed/{key}/{hash}/embeddings.arrow");
    moto.python(&format!(
        "body = s3.get_object(Bucket={BUCKET:?}, Key={object:?})['Body'].read()\n\
         s3.put_object(Bucket={BUCKET:?}, Key={object:?}, Body=bytes([body[0] ^ 0xff]) + body[1:])"
    ));
    let c = moto.ok(&store("c"), &["run", &cfg, "--json"]);
    let c_nodes = statuses(&c);
    assert_eq!(status_of(&c_nodes, "embed"), "ran", "{c_nodes:?}");
    assert_eq!(status_of(&c_nodes, "train"), "fetched", "{c_nodes:?}");
    let err = stderr(&c);
    assert!(
        err.contains("refused") && err.contains(&key) && err.contains("embeddings.arrow"),
        "{err}"
    );
    assert_eq!(embeddings(&store("a")), embeddings(&store("c")));
    // C replaced the refused object: the next store fetches embed again.
    let d = moto.ok(&store("d"), &["run", &cfg, "--json", "--until", "embed"]);
    assert_eq!(
        status_of(&statuses(&d), "embed"),
        "fetched",
        "{}",
        stderr(&d)
    );

    // Two stores uploading the same keys at once leave one valid object per key.
    let raced = ["--set", "plan.seed=7"];
    let start = |s: &str| {
        moto.dml(&store(s), &["run", &cfg, "--json", raced[0], raced[1]])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (e, f) = (start("e"), start("f"));
    for out in [e.wait_with_output().unwrap(), f.wait_with_output().unwrap()] {
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let g = moto.ok(&store("g"), &["run", &cfg, "--json", raced[0], raced[1]]);
    let g_nodes = statuses(&g);
    assert!(
        g_nodes.iter().all(|(_, s)| s == "fetched"),
        "{g_nodes:?}\n{}",
        stderr(&g)
    );
    let plan_key = latest_manifest(&store("g"), "tiny", "plan")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let manifests = moto.python(&format!(
        "r = s3.list_objects_v2(Bucket={BUCKET:?}, Prefix='team/objects/plan/{plan_key}/')\n\
         print(sum(1 for o in r['Contents'] if o['Key'].endswith('/manifest.json')))"
    ));
    assert_eq!(manifests.trim(), "1");

    // `dml pull` into an empty store takes the newest run record (the raced
    // run's, shared by `dml run`) from the remote too; then nothing is left to build.
    let pulled = moto.ok(&store("h"), &["pull", "--run", "tiny"]);
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains("fetched"),
        "{}",
        String::from_utf8_lossy(&pulled.stdout)
    );
    let h = run_json(&store("h"), &[&cfg, raced[0], raced[1]]);
    assert!(h.iter().all(|(_, s)| s == "cached"), "{h:?}");
    let pushed = moto.ok(&store("a"), &["push"]);
    assert!(String::from_utf8_lossy(&pushed.stdout).contains("already on"));

    // The server is gone: a warning, a local build, a successful run.
    moto.stop();
    let started = Instant::now();
    let i = moto.ok(&store("i"), &["run", &cfg, "--json"]);
    assert!(statuses(&i).iter().all(|(_, s)| s == "ran"));
    let err = stderr(&i);
    assert!(
        err.contains("warning") && err.contains("not usable"),
        "{err}"
    );
    assert_eq!(
        err.matches("not usable").count(),
        1,
        "one warning, not one per stage:\n{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(embeddings(&store("a")), embeddings(&store("i")));
}

/// The key of the artifact `latest/tiny/<node>` of `store`.
fn key_of(store: &Path, node: &str) -> String {
    latest_manifest(store, "tiny", node)["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_bad_object_is_refused_and_replaced_alone_and_the_remote_stays_in_use() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let store = |n: &str| tmp.path().join(n);
    let a = moto.ok(&store("a"), &["run", &cfg, "--json"]);
    assert!(statuses(&a).iter().all(|(_, s)| s == "ran"));

    // One of synth's images becomes a 0-byte object (a range read of it
    // answers 416), and train's manifest is edited in the bucket (valid JSON,
    // the key intact, its own digest no longer matching).
    let synth = latest_manifest(&store("a"), "tiny", "synth");
    let synth_key = key_of(&store("a"), "synth");
    let image = synth["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["size"].as_u64().unwrap() > 0)
        .expect("a non-empty file");
    let image_path = image["path"].as_str().unwrap();
    let emptied = format!(
        "team/objects/synth/{synth_key}/{}/{image_path}",
        image["blake3"].as_str().unwrap()
    );
    moto.python(&format!(
        "s3.put_object(Bucket={BUCKET:?}, Key={emptied:?}, Body=b'')"
    ));
    let train_key = key_of(&store("a"), "train");
    let train_manifest = format!("team/objects/train/{train_key}/manifest.json");
    moto.python(&format!(
        "import json\n\
         m = json.loads(s3.get_object(Bucket={BUCKET:?}, Key={train_manifest:?})['Body'].read())\n\
         assert next(iter(m)) == 'digest'\n\
         m['provenance']['host'] = 'edited-in-the-bucket'\n\
         s3.put_object(Bucket={BUCKET:?}, Key={train_manifest:?}, Body=json.dumps(m, indent=2).encode())"
    ));

    // Store B refuses those two, builds them, and fetches every other stage:
    // the remote is not turned off by one bad object.
    let b = moto.ok(&store("b"), &["run", &cfg, "--json"]);
    let nodes = statuses(&b);
    let err = stderr(&b);
    for (id, status) in &nodes {
        let expected = match id.as_str() {
            "synth" | "train" => "ran",
            _ => "fetched",
        };
        assert_eq!(status, expected, "{id}: {nodes:?}\n{err}");
    }
    assert!(!err.contains("not usable"), "{err}");
    assert!(
        err.contains("refused") && err.contains(&synth_key) && err.contains(image_path),
        "{err}"
    );
    assert!(err.contains("0 bytes on the remote"), "{err}");
    assert!(
        err.contains(&train_key) && err.contains("own digest"),
        "{err}"
    );
    // Nothing edited was saved: B's train manifest is B's own build's, and
    // every artifact verifies.
    assert_ne!(
        latest_manifest(&store("b"), "tiny", "train")["provenance"]["host"],
        "edited-in-the-bucket"
    );
    let verified = moto.ok(&store("b"), &["run", &cfg, "--json", "--verify"]);
    assert!(statuses(&verified).iter().all(|(_, s)| s == "cached"));
    assert_eq!(embeddings(&store("a")), embeddings(&store("b")));

    // B replaced both: an empty store C fetches everything.
    let c = moto.ok(&store("c"), &["run", &cfg, "--json"]);
    let c_nodes = statuses(&c);
    assert!(
        c_nodes.iter().all(|(_, s)| s == "fetched"),
        "{c_nodes:?}\n{}",
        stderr(&c)
    );
    assert_eq!(embeddings(&store("a")), embeddings(&store("c")));
}

#[test]
fn with_a_remote_and_the_default_remote_skip_a_run_until_plan_works() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // No [store] table: `remote_skip = ["decode"]`, a stage a run until plan
    // does not reach.
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let store = tmp.path().join("store");
    moto.ok(&store, &["run", cfg, "--until", "plan", "--dry-run"]);
    let out = moto.ok(&store, &["run", cfg, "--until", "plan", "--json"]);
    let nodes = statuses(&out);
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|(_, s)| s == "ran"), "{nodes:?}");
    // And a stage name that dml does not have is still refused, with a hint.
    let typo = write_config(
        tmp.path(),
        &format!(
            "{}\n[store]\nremote_skip = [\"decod\"]\n",
            Config::tiny().train()
        ),
    );
    let out = moto
        .dml(&store, &["run", typo.to_str().unwrap(), "--until", "plan"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did you mean `decode`"),
        "{}",
        stderr(&out)
    );
}

/// True once `store` holds a committed artifact of `stage`.
fn committed(store: &Path, stage: &str) -> bool {
    std::fs::read_dir(store.join("objects").join(stage))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().join("manifest.json").is_file())
        })
        .unwrap_or(false)
}

#[test]
fn a_hung_server_delays_the_end_of_a_run_by_the_upload_wait_at_most() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Every request may hang for a minute (lookups included: with the default 3 s
    // lookup timeout, an upload's HEAD gives the remote up before the end of the run
    // ever waits); the end of the run waits 3 s for the uploads still running.
    let text = format!(
        "{}\n[store]\nremote_skip = []\nremote_timeout = 60.0\nremote_transfer_timeout = 60.0\nremote_upload_wait = 3.0\n",
        Config::tiny().train()
    );
    let cfg = write_config(tmp.path(), &text);
    let cfg = cfg.to_str().unwrap();
    let store = tmp.path().join("store");
    let pid = moto.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    let (out_path, err_path) = (tmp.path().join("run.out"), tmp.path().join("run.err"));
    let mut child = moto
        .dml(&store, &["run", cfg, "--json"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // The server stops answering (`kill -STOP`) once the decode cache is built: the
    // plan's lookups are done, and the uploads of every stage from train on (and
    // perhaps the last ones before it) hang. The end of the last stage is noted.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut stopped, mut last_stage_done) = (false, None);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            signal("-CONT");
            panic!("the run did not end within 300 s");
        }
        if !stopped && committed(&store, "decode") {
            signal("-STOP");
            stopped = true;
        }
        if last_stage_done.is_none() && committed(&store, "report") {
            last_stage_done = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ended = Instant::now();
    signal("-CONT");
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "{err}");
    assert!(stopped, "the server was never stopped:\n{err}");
    let run = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: err.clone().into_bytes(),
    };
    let nodes = statuses(&run);
    assert!(nodes.iter().all(|(_, s)| s == "ran"), "{nodes:?}");
    assert!(
        err.contains("not uploaded")
            && err.contains("did not finish within store.remote_upload_wait = 3s")
            && err.contains("dml push"),
        "{err}"
    );
    // The report is the last stage; the run ends about 3 s after it, far from the
    // minute a hung request may take.
    let waited = ended - last_stage_done.expect("the report stage was committed");
    assert!(
        waited < Duration::from_secs(30),
        "the run ended {waited:?} after its last stage:\n{err}"
    );

    // The server answers again: `dml push` uploads what was left, and an empty
    // store fetches everything.
    moto.ok(&store, &["push"]);
    let fresh = tmp.path().join("fresh");
    let all = moto.ok(&fresh, &["run", cfg, "--json"]);
    let fetched = statuses(&all);
    assert!(
        fetched.iter().all(|(_, s)| s == "fetched"),
        "{fetched:?}\n{}",
        stderr(&all)
    );
    moto.stop();
}
