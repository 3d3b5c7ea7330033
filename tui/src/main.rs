//! `fanout-tui`: live console for one or more Fanout gateways.
//!
//! Owns the terminal and the one event loop: terminal events, a render tick,
//! the gateways' stats streams and one-shot request answers, SIGINT/SIGTERM.
//! The terminal is restored on every exit path: normal return, error, panic
//! (a hook installed before raw mode) and signals.

use std::io::stdout;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use crossterm::event::{Event, EventStream};
use crossterm::{cursor, execute, terminal};
use futures::StreamExt;
use tokio::sync::mpsc;

use fanout_tui::client::{http_client, Admin, Msg, SetupError};
use fanout_tui::state::{Command, State};
use fanout_tui::ui;

/// Live console for Fanout gateways.
#[derive(Parser)]
#[command(name = "fanout-tui", version)]
struct Args {
    /// Admin address of a gateway (repeat for several), like http://127.0.0.1:9556.
    #[arg(long = "admin", default_value = "http://127.0.0.1:9556")]
    admin: Vec<String>,
    /// Admin bearer token (the flag `fanout serve` and `fanout apply` take).
    #[arg(
        long = "admin-token",
        visible_alias = "token",
        env = "FANOUT_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// PEM certificate(s) to trust for `https://` admin URLs, besides the
    /// public roots (a private CA, or a gateway's self-signed certificate).
    #[arg(long, env = "FANOUT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

fn main() -> ExitCode {
    let args = Args::parse();
    let admins: Result<Vec<Admin>, SetupError> =
        http_client(args.ca_cert.as_deref()).and_then(|client| {
            args.admin
                .iter()
                .map(|u| Ok(Admin::new(u, args.admin_token.clone(), client.clone())?))
                .collect()
        });
    let admins = match admins {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fanout-tui: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fanout-tui: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        hook(info);
    }));
    let result = runtime.block_on(run(admins));
    restore_terminal();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-tui: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(admins: Vec<Admin>) -> anyhow::Result<()> {
    terminal::enable_raw_mode()
        .context("cannot put the terminal in raw mode (is this a terminal?)")?;
    execute!(stdout(), terminal::EnterAlternateScreen, cursor::Hide)
        .context("cannot switch to the alternate screen")?;
    let backend = ratatui::backend::CrosstermBackend::new(stdout());
    let mut term = ratatui::Terminal::new(backend).context("cannot size the terminal")?;
    term.clear().context("cannot clear the terminal")?;

    let urls: Vec<&str> = admins.iter().map(Admin::base).collect();
    let mut state = State::new(&urls, now_ms());
    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let mut streams = Vec::new();
    for (gw, admin) in admins.iter().enumerate() {
        streams.push(tokio::spawn(admin.clone().follow_stats(gw, tx.clone())));
    }
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let outcome = loop {
        let mut commands = Vec::new();
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Key(key))) => {
                    state.now_ms = now_ms();
                    commands = state.on_key(key);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::anyhow!("reading the terminal: {e}")),
                None => break Ok(()),
            },
            msg = rx.recv() => {
                state.now_ms = now_ms();
                if let Some(msg) = msg {
                    commands = handle(&mut state, msg);
                }
            }
            _ = tick.tick() => {}
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        for c in commands {
            match c {
                Command::Quit => {
                    for s in &streams {
                        s.abort();
                    }
                    restore_terminal();
                    return Ok(());
                }
                Command::Pause {
                    id,
                    pause,
                    gateways,
                } => {
                    for gw in gateways {
                        if let Some(a) = admins.get(gw) {
                            let (a, tx, id) = (a.clone(), tx.clone(), id.clone());
                            tokio::spawn(async move {
                                let result = Box::new(a.pause(&id, pause).await);
                                let _ = tx
                                    .send(Msg::Paused {
                                        gw,
                                        id,
                                        pause,
                                        result,
                                    })
                                    .await;
                            });
                        }
                    }
                }
                Command::FetchRegistry(gw) => {
                    if let Some(a) = admins.get(gw) {
                        let (a, tx) = (a.clone(), tx.clone());
                        tokio::spawn(async move {
                            let _ = tx.send(Msg::Registry(Box::new(a.registry().await))).await;
                        });
                    }
                }
                Command::FetchEffective(gw, dep) => {
                    if let Some(a) = admins.get(gw) {
                        let (a, tx) = (a.clone(), tx.clone());
                        tokio::spawn(async move {
                            let result = a.effective(&dep).await;
                            let _ = tx.send(Msg::Effective(dep, result)).await;
                        });
                    }
                }
            }
        }
        state.now_ms = now_ms();
        if let Err(e) = term.draw(|f| ui::render(&state, f)) {
            break Err(anyhow::anyhow!("drawing: {e}"));
        }
    };
    for s in &streams {
        s.abort();
    }
    outcome
}

fn handle(state: &mut State, msg: Msg) -> Vec<Command> {
    match msg {
        Msg::Connecting(gw) => state.on_connecting(gw),
        Msg::Stats(gw, snap) => return state.on_stats(gw, *snap),
        Msg::BadData(gw, e) => state.on_bad_data(gw, e),
        Msg::Disconnected {
            gw,
            error,
            retry_in,
        } => {
            let at = state.now_ms + retry_in.as_millis() as i64;
            state.on_disconnected(gw, error, at);
        }
        Msg::Registry(r) => state.on_registry(*r),
        Msg::Effective(dep, r) => state.on_effective(dep, r),
        Msg::Paused {
            gw,
            id,
            pause,
            result,
        } => {
            let name = state.gateways.get(gw).map(|g| g.name()).unwrap_or_default();
            match *result {
                Ok(t) => {
                    state.notify(
                        format!(
                            "target {id} {} on {name}",
                            if pause { "paused" } else { "resumed" }
                        ),
                        false,
                    );
                    state.on_target(gw, t);
                }
                Err(e) => state.notify(
                    format!(
                        "cannot {} {id} on {name}: {e}",
                        if pause { "pause" } else { "resume" }
                    ),
                    true,
                ),
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tui_admin_token_flag_has_the_gateways_name_and_the_old_one_as_alias() {
        for flag in ["--admin-token", "--token"] {
            let a = Args::try_parse_from(["fanout-tui", flag, "t0k"]).unwrap();
            assert_eq!(a.admin_token.as_deref(), Some("t0k"), "{flag}");
        }
    }
}
