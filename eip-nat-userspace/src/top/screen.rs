//! Where screens go: a terminal, live, until `q` (the terminal restored
//! on the way out, also on an error or a panic), or one screen as plain
//! text (`--once`), for scripts and tests.

use std::time::{Duration, Instant};

use ratatui::{
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{self, Event},
    Terminal,
};

use super::{
    render::{height_for, render},
    view::{Action, View},
};
use crate::{
    api::TopQuery,
    client::{Client, ClientError},
};

/// What `eip-nat top` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub interval: Duration,
    /// EIPs the agent ranks and sends each time.
    pub n: usize,
}

fn query(view: &View, options: &Options) -> TopQuery {
    TopQuery {
        n: Some(options.n),
        sort: view.sort.ranked_by(),
        filter: (!view.filter.is_empty()).then(|| view.filter.clone()),
    }
}

/// The buffer's text, one line per row, without trailing blanks.
pub fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right())
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The words of the line of a text screen (from [`text`]) whose first
/// word is `first`, borders left out: how a script reads a row of `top
/// --once`.
pub fn row<'a>(screen: &'a str, first: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| {
            l.split(|c: char| c.is_whitespace() || c == '│')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|w| w.first() == Some(&first))
}

/// Two samples `interval` apart, drawn once `width` wide (and as high as
/// they need, unless `height`), as text.
pub fn once(
    client: &Client,
    options: &Options,
    view: &View,
    width: u16,
    height: Option<u16>,
) -> Result<String, ClientError> {
    let q = query(view, options);
    let before = client.top(&q)?;
    std::thread::sleep(options.interval);
    let now = client.top(&q)?;
    let height = height.unwrap_or_else(|| height_for(&before, &now));
    let mut terminal = Terminal::new(TestBackend::new(width, height))?;
    terminal.draw(|f| render(f, &before, &now, view))?;
    Ok(text(terminal.backend().buffer()))
}

/// Restores the terminal when dropped: on `q`, on an error, and on a
/// panic as it unwinds (ratatui's panic hook does it too, before the
/// message is printed).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The live view, until `q`, Esc or Ctrl-C.
pub fn live(client: &Client, options: &Options, mut view: View) -> anyhow::Result<()> {
    // Before the terminal is taken: a first sample, so that an agent
    // that cannot be reached is reported on a normal terminal.
    let mut before = client.top(&query(&view, options))?;
    let mut now = before.clone();
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut next = Instant::now() + options.interval;
    loop {
        terminal.draw(|f| render(f, &before, &now, &view))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                match view.key(key) {
                    Action::Quit => return Ok(()),
                    Action::Query => next = Instant::now(),
                    Action::Redraw | Action::None => {}
                }
            }
            continue;
        }
        next = Instant::now() + options.interval;
        // A failed sample keeps the last screen, with the error shown.
        match client.top(&query(&view, options)) {
            Ok(sample) => {
                before = std::mem::replace(&mut now, sample);
                view.error = None;
            }
            Err(e) => view.error = Some(e.to_string()),
        }
    }
}
