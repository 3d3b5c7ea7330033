//! Keyboard handling: a key changes the [`State`] and may ask the event loop
//! for [`Command`]s (quit, pause a target, read the registry). Pure, so the
//! bindings are unit tested without a terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::state::{Command, ConfigItem, State, View};

/// The key bindings, for the help overlay.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab, 1-5", "switch view"),
    ("↑ ↓ or j k", "move the selection"),
    ("PgUp PgDn, g G", "page, first, last"),
    ("Enter", "target detail / a Deployment's exports"),
    ("Esc", "close detail, help or filter"),
    ("/", "filter (Enter keeps, Esc clears)"),
    ("p", "pause or resume the selected target"),
    ("s / r", "sort by the next column / reverse"),
    ("?", "this help"),
    ("q, Ctrl-C", "quit"),
];

const PAGE: usize = 10;

impl State {
    /// Applies one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Command> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Command::Quit];
        }
        if let Some(command) = self.confirm.take() {
            if let (KeyCode::Char('y' | 'Y'), Command::Pause { id, pause, .. }) =
                (key.code, &command)
            {
                let doing = if *pause { "pausing" } else { "resuming" };
                self.notify(format!("{doing} target {id}…"), false);
                return vec![command];
            }
            self.notify("not changed", false);
            return Vec::new();
        }
        if self.editing_filter {
            self.edit_filter(key);
            return self.follow_selection();
        }
        if self.help {
            if matches!(key.code, KeyCode::Char('q')) {
                return vec![Command::Quit];
            }
            self.help = false;
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('q') => return vec![Command::Quit],
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.switch((self.view.index() + 1) % 5),
            KeyCode::BackTab => self.switch((self.view.index() + 4) % 5),
            KeyCode::Char(c @ '1'..='5') => self.switch(c as usize - '1' as usize),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::PageDown => self.move_by(PAGE as isize),
            KeyCode::PageUp => self.move_by(-(PAGE as isize)),
            KeyCode::Home | KeyCode::Char('g') => self.selected[self.view.index()] = 0,
            KeyCode::End | KeyCode::Char('G') => {
                self.selected[self.view.index()] = self.row_count().saturating_sub(1)
            }
            KeyCode::Esc => {
                if self.detail.is_some() {
                    self.detail = None;
                } else if self.view == View::Deployments && self.effective.is_some() {
                    self.effective = None;
                } else {
                    self.filter[self.view.index()].clear();
                }
            }
            KeyCode::Char('/') if self.view != View::Overview && self.detail.is_none() => {
                self.editing_filter = true;
            }
            KeyCode::Char('s') if self.view == View::Targets => {
                self.sort = self.sort.next();
                self.sort_desc = self.sort != crate::state::SortKey::Id;
            }
            KeyCode::Char('r') if self.view == View::Targets => self.sort_desc = !self.sort_desc,
            KeyCode::Char('s') if self.view == View::Deployments => {
                self.deployment_sort = self.deployment_sort.next();
                self.deployment_sort_desc =
                    self.deployment_sort != crate::state::DeploymentSort::Id;
            }
            KeyCode::Char('r') if self.view == View::Deployments => {
                self.deployment_sort_desc = !self.deployment_sort_desc
            }
            KeyCode::Char('p') if self.view == View::Targets => {
                if let Some(t) = self.selected_target() {
                    let pause = !t.paused;
                    self.notify(
                        format!(
                            "{} {} ({})? y confirms, any other key cancels",
                            if pause { "Pause" } else { "Resume" },
                            t.name(),
                            t.id
                        ),
                        false,
                    );
                    self.confirm = Some(Command::Pause {
                        id: t.id,
                        pause,
                        gateways: t.gateways,
                    });
                }
                return Vec::new();
            }
            KeyCode::Enter => match self.view {
                View::Targets if self.detail.is_none() => {
                    self.detail = self.selected_target().map(|t| t.id);
                }
                View::Config => return self.fetch_selected_deployment(true),
                View::Deployments => {
                    let id = self.selected_deployment().map(|d| d.id);
                    return self.fetch_effective(id, true);
                }
                _ => {}
            },
            _ => {}
        }
        self.follow_selection()
    }

    fn edit_filter(&mut self, key: KeyEvent) {
        let f = &mut self.filter[self.view.index()];
        match key.code {
            KeyCode::Enter => self.editing_filter = false,
            KeyCode::Esc => {
                f.clear();
                self.editing_filter = false;
            }
            KeyCode::Backspace => {
                f.pop();
            }
            KeyCode::Char(c) if f.chars().count() < 200 => f.push(c),
            _ => {}
        }
        self.selected[self.view.index()] = 0;
    }

    fn switch(&mut self, view: usize) {
        self.view = View::ALL[view];
        self.editing_filter = false;
    }

    fn move_by(&mut self, delta: isize) {
        if self.detail.is_some() {
            return;
        }
        let n = self.row_count();
        let i = self.selection() as isize + delta;
        self.selected[self.view.index()] = i.clamp(0, n.saturating_sub(1) as isize) as usize;
    }

    /// In Config, landing on a Deployment reads its effective exports.
    fn follow_selection(&mut self) -> Vec<Command> {
        if self.view == View::Config {
            self.fetch_selected_deployment(false)
        } else {
            Vec::new()
        }
    }

    fn fetch_selected_deployment(&mut self, force: bool) -> Vec<Command> {
        let id = match self.selected_config().map(|r| r.item) {
            Some(ConfigItem::Deployment(id)) => Some(id),
            _ => None,
        };
        self.fetch_effective(id, force)
    }

    /// Reads Deployment `id`'s effective exports (with their status), unless
    /// they are the ones shown and `force` is not set.
    fn fetch_effective(&mut self, id: Option<String>, force: bool) -> Vec<Command> {
        let Some(id) = id else {
            return Vec::new();
        };
        if !force && self.effective.as_ref().is_some_and(|e| e.deployment == id) {
            return Vec::new();
        }
        let Some(gw) = self.first_connected() else {
            self.notify("no gateway connected: cannot read effective exports", true);
            return Vec::new();
        };
        self.effective = Some(crate::state::Effective {
            deployment: id.clone(),
            result: Err("loading…".into()),
        });
        vec![Command::FetchEffective(gw, id)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Snapshot;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn state_with_targets() -> State {
        let mut s = State::new(&["http://a"], 0);
        let snap: Snapshot = serde_json::from_value(serde_json::json!({
            "time": "2026-11-25T13:00:00Z",
            "targets": [
                {"id": "t-a", "state": "healthy"},
                {"id": "t-b", "state": "failing"},
                {"id": "t-c", "state": "paused", "paused": true}
            ]
        }))
        .unwrap();
        s.on_stats(0, snap);
        s
    }

    #[test]
    fn views_switch_with_tab_and_digits() {
        let mut s = State::new(&["http://a"], 0);
        s.on_key(key(KeyCode::Tab));
        assert_eq!(s.view, View::Targets);
        s.on_key(key(KeyCode::BackTab));
        s.on_key(key(KeyCode::BackTab));
        assert_eq!(s.view, View::Deployments);
        s.on_key(key(KeyCode::BackTab));
        assert_eq!(s.view, View::Config);
        s.on_key(key(KeyCode::Char('5')));
        assert_eq!(s.view, View::Deployments);
        s.on_key(key(KeyCode::Tab));
        assert_eq!(s.view, View::Overview);
        s.on_key(key(KeyCode::Char('3')));
        assert_eq!(s.view, View::Failures);
        assert_eq!(s.on_key(key(KeyCode::Char('q'))), vec![Command::Quit]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        s.editing_filter = true;
        assert_eq!(s.on_key(ctrl_c), vec![Command::Quit]);
    }

    #[test]
    fn p_pauses_the_selected_target_and_resumes_a_paused_one() {
        let mut s = state_with_targets();
        s.on_key(key(KeyCode::Char('2')));
        // Sorted worst first: t-b (failing), t-c (paused), t-a. `p` asks
        // first; any key but `y` leaves the target as it is.
        assert_eq!(s.on_key(key(KeyCode::Char('p'))), vec![]);
        assert!(s.notice.as_ref().unwrap().text.contains("Pause"));
        assert_eq!(s.on_key(key(KeyCode::Char('j'))), vec![]);
        assert_eq!(s.notice.as_ref().unwrap().text, "not changed");
        assert_eq!(s.selection(), 0, "the cancelling key does nothing else");
        s.on_key(key(KeyCode::Char('p')));
        assert_eq!(
            s.on_key(key(KeyCode::Char('y'))),
            vec![Command::Pause {
                id: "t-b".into(),
                pause: true,
                gateways: vec![0]
            }]
        );
        s.on_key(key(KeyCode::Char('j')));
        s.on_key(key(KeyCode::Char('p')));
        assert!(s.notice.as_ref().unwrap().text.contains("Resume"));
        assert_eq!(
            s.on_key(key(KeyCode::Char('y'))),
            vec![Command::Pause {
                id: "t-c".into(),
                pause: false,
                gateways: vec![0]
            }]
        );
        s.on_key(key(KeyCode::Enter));
        assert_eq!(s.detail.as_deref(), Some("t-c"));
        s.on_key(key(KeyCode::Esc));
        assert_eq!(s.detail, None);
    }

    #[test]
    fn filter_is_typed_kept_and_cleared() {
        let mut s = state_with_targets();
        s.on_key(key(KeyCode::Char('2')));
        s.on_key(key(KeyCode::Char('/')));
        for c in "t-a".chars() {
            s.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(s.on_key(key(KeyCode::Enter)), vec![]);
        assert_eq!(s.targets().len(), 1);
        // `q` typed in a filter does not quit.
        s.on_key(key(KeyCode::Char('/')));
        assert_eq!(s.on_key(key(KeyCode::Char('q'))), vec![]);
        s.on_key(key(KeyCode::Esc));
        assert_eq!(s.targets().len(), 3);
    }

    #[test]
    fn sort_cycles_and_selection_is_clamped() {
        let mut s = state_with_targets();
        s.on_key(key(KeyCode::Char('2')));
        for _ in 0..10 {
            s.on_key(key(KeyCode::Down));
        }
        assert_eq!(s.selection(), 2);
        s.on_key(key(KeyCode::Char('s')));
        assert_eq!(s.sort, crate::state::SortKey::Rate);
    }
}
