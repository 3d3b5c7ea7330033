//! The console in a real terminal: a private tmux server that runs a shell
//! command in a pane of a given size, takes keys and shows its screen.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One tmux server on a private socket with one session (`tui`), killed
/// when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Requires tmux (a failure, never a skip: the suites that use it are
    /// run by `.ci/run`, which installs it).
    pub fn require() {
        assert!(
            Command::new("tmux")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "tmux is not installed (apt-get install tmux)"
        );
    }

    /// Starts a server named after `name` and this process, whose session
    /// `tui` runs `script` (a shell command) in a `width`x`height` pane with
    /// `env` added.
    pub fn start(name: &str, script: &str, width: u16, height: u16, env: &[(&str, &str)]) -> Tmux {
        let tmux = Tmux {
            socket: format!("{name}-{}", std::process::id()),
        };
        let out = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args([
                "-s",
                "tui",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .arg(script)
            .envs(env.iter().copied())
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .expect("tmux new-session");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run tmux")
    }

    /// Sends keys (tmux `send-keys` names) to the pane.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend(keys);
        let out = self.cmd(&args);
        assert!(out.status.success(), "send-keys: {out:?}");
    }

    /// The pane's text now.
    pub fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", "tui"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tmux format (`#{alternate_on}`, ...) of the pane.
    pub fn format(&self, f: &str) -> String {
        let out = self.cmd(&["display-message", "-p", "-t", "tui", f]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the screen satisfies `ok`; panics with the screen and `context` otherwise.
    pub fn wait_screen(
        &self,
        what: &str,
        timeout: Duration,
        context: &dyn Fn() -> String,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}\n{}",
                context()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}
