//! `idmint dev` as a child process, for the tests that run real sidecars against it: apps,
//! instances and SPIFFE IDs numbered 1 to 9, in one org and space.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::Running;
use super::{free_port, http_get};

pub const TD: &str = "cf.internal";
pub const ORG: &str = "0e0e0e0e-0000-4000-8000-0000000000aa";
pub const SPACE: &str = "5a5a5a5a-0000-4000-8000-0000000000bb";

pub fn app(n: u8) -> String {
    format!("a{n}a{n}a{n}a{n}-0000-4000-8000-00000000000{n}")
}

pub fn instance(n: u8) -> String {
    format!("1{n}1{n}1{n}1{n}-0000-4000-8000-00000000000{n}")
}

pub fn spiffe_id(n: u8) -> String {
    format!("spiffe://{TD}/org/{ORG}/space/{SPACE}/app/{}", app(n))
}

pub struct Idmint {
    pub process: Running,
    pub data: PathBuf,
    pub admin: u16,
}

impl Idmint {
    pub fn start(dir: &Path) -> Idmint {
        Self::start_with(dir, &[])
    }

    /// Starts `idmint dev` with extra `--set KEY=VALUE` settings.
    pub fn start_with(dir: &Path, settings: &[&str]) -> Idmint {
        Self::start_configured(dir, None, settings)
    }

    /// Starts `idmint dev` with a config file and extra `--set KEY=VALUE` settings.
    pub fn start_configured(dir: &Path, config: Option<&Path>, settings: &[&str]) -> Idmint {
        let data = dir.join("idmint-data");
        let admin = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idmint"));
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--set", &format!("admin.listen=127.0.0.1:{admin}")])
            .args(["--set", "server.listen=127.0.0.1:0"]);
        for s in settings {
            cmd.args(["--set", s]);
        }
        let mut child = cmd
            .arg("dev")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("idmint.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("idmint dev prints ready").unwrap();
            if line.starts_with("ready") {
                break;
            }
        }
        // Keep reading so a late line never blocks idmint on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Idmint {
            process: Running(child),
            data,
            admin,
        }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_idmint"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--set", &format!("admin.listen=127.0.0.1:{}", self.admin)])
            .args(args)
            .output()
            .unwrap()
    }

    /// The admin API's socket, for requests as the service's user.
    pub fn admin_socket(&self) -> PathBuf {
        self.data.join("admin.sock")
    }

    /// Registers instance `n` of app `n`; returns its socket.
    pub fn register(&self, n: u8) -> String {
        let out = self.cli(&[
            "instance",
            "register",
            "--instance-guid",
            &instance(n),
            "--app-guid",
            &app(n),
            "--space-guid",
            SPACE,
            "--org-guid",
            ORG,
            "--ip",
            &format!("10.255.0.{n}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            Path::new(&socket).exists(),
            "socket {socket} exists on return"
        );
        socket
    }

    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.admin, "/metrics").expect("idmint metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}
