//! A throwaway PostgreSQL server for `truc bench pg-hub` and the tests: initdb
//! and pg_ctl from the machine's PostgreSQL (Debian's `postgresql` package) into
//! a temporary directory, listening on a unix socket there only (no TCP port),
//! fsync on; stopped (immediate mode) and deleted when dropped.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The directory holding initdb and pg_ctl: on the PATH, else the newest
/// /usr/lib/postgresql/*/bin.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        if let Some(dir) = p.parent() {
            return Ok(dir.to_owned());
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|b| b.join("initdb").exists())
        .context("PostgreSQL's initdb is not installed (Debian: apt-get install postgresql)")
}

pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The server refuses to run as root: its tools run as `postgres` then.
    as_postgres: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// initdb (user `truc`, trust on the socket) and pg_ctl start, waiting
    /// until the server accepts connections.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("truc-pg-").tempdir()?;
        let as_postgres = rustix::process::geteuid().is_root();
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .output()
                .context("chown the server directory to postgres")?;
            if !out.status.success() {
                bail!(
                    "chown -R postgres: {}: {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let s = Self {
            bin: bin_dir()?,
            as_postgres,
            dir,
        };
        let data = s.path("data");
        s.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "truc",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let opts = format!("-c listen_addresses='' -k {} -c fsync=on", s.path(""));
        s.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &opts,
                "-l",
                &s.path("server.log"),
                "-w",
                "start",
            ],
        )?;
        Ok(s)
    }

    /// A server tool, run as `postgres` when we are root.
    pub fn tool(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .tool(tool)
            .args(args)
            .output()
            .with_context(|| format!("run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A path inside the server's directory.
    pub fn path(&self, rel: &str) -> String {
        self.dir
            .path()
            .join(rel)
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned()
    }

    /// The server's main process (postmaster.pid's first line).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The connection string of database `db` (key=value form, unix socket).
    pub fn url(&self, db: &str) -> String {
        format!("host={} user=truc dbname={db}", self.path(""))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.path("data");
        let _ = self
            .tool("pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "stop"])
            .output();
    }
}
