//! One screen of `eip-nat top`, drawn from the two last samples and the
//! view's state and nothing else, so that a test draws it into ratatui's
//! `TestBackend` exactly as a terminal shows it.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Borders, Cell, Padding, Paragraph, Row, Table},
    Frame,
};

use super::{
    rates::{rates, DropRate, EipRate, Flow},
    view::{SortKey, View},
};
use crate::api::Top;

/// A rate with an SI prefix: `200.0`, `147.2k`, `1.3M`; `-` if unknown.
pub fn si(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut scaled = v;
    let mut prefix = 0;
    while scaled.abs() >= 999.95 && prefix + 1 < PREFIXES.len() {
        scaled /= 1000.0;
        prefix += 1;
    }
    format!("{scaled:.1}{}", PREFIXES[prefix])
}

/// Lines above the tables.
const HEADER: u16 = 2;
/// A block's borders and its table's header row.
const CHROME: u16 = 3;

/// The height a screen needs to show every row of these samples.
pub fn height_for(before: &Top, now: &Top) -> u16 {
    let r = rates(before, now);
    let lines = HEADER as usize + 2 * CHROME as usize + r.eips.len() + r.drops.len().max(1);
    lines.min(u16::MAX as usize) as u16
}

/// Draws the screen for the interval from `before` to `now`.
pub fn render(frame: &mut Frame, before: &Top, now: &Top, view: &View) {
    let r = rates(before, now);
    let drop_lines = r.drops.len().max(1) as u16 + CHROME;
    let [header, eips, drops] = Layout::vertical([
        Constraint::Length(HEADER),
        Constraint::Min(CHROME),
        Constraint::Length(drop_lines),
    ])
    .areas(frame.area());
    frame.render_widget(header_text(&r.seconds, now, view), header);
    let rows = view.rows(&r.eips);
    eip_table(frame, eips, &rows, now, view.sort);
    drop_table(frame, drops, &r.drops);
}

fn header_text<'a>(seconds: &f64, now: &Top, view: &'a View) -> Paragraph<'a> {
    let g = &now.generation;
    let lag = g.generation.saturating_sub(g.applied_generation);
    let mut generation = format!(
        "generation {}, datapath at {} (lag {lag})",
        g.generation, g.applied_generation
    );
    if let Some(p) = &g.reconcile {
        generation.push_str(&format!(
            ", reconciling: {} {}/{}",
            p.phase, p.done, p.total
        ));
    }
    let lag_style = if lag > 0 || g.reconcile.is_some() {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    let first = Line::from(vec![
        Span::styled("eip-nat top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " · rates over {seconds:.2} s · {} associations · ",
            now.associations
        )),
        Span::styled(generation, lag_style),
    ]);
    let second = match (&view.error, &view.typing) {
        (_, Some(typing)) => Line::from(vec![
            Span::raw("filter: "),
            Span::styled(
                format!("{typing}█"),
                Style::new().add_modifier(Modifier::REVERSED),
            ),
            Span::raw("  (Enter applies, Esc cancels)"),
        ]),
        (Some(e), None) => Line::styled(format!("error: {e}"), Style::new().fg(Color::Red)),
        (None, None) => {
            let filter = if view.filter.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", view.filter)
            };
            Line::from(format!(
                "sort: {} (s) · filter: {filter} (/) · q quits",
                view.sort.title()
            ))
        }
    };
    Paragraph::new(Text::from(vec![first, second]))
}

/// The EIP table's columns: title, width, the sort key it shows.
const COLUMNS: [(&str, u16, Option<SortKey>); 9] = [
    ("EIP", 15, Some(SortKey::Eip)),
    ("ENI", 0, None),
    ("MODE", 11, None),
    ("IN PKT/S", 10, Some(SortKey::InPackets)),
    ("OUT PKT/S", 10, Some(SortKey::OutPackets)),
    ("PKT/S", 10, Some(SortKey::TotalPackets)),
    ("IN BIT/S", 10, Some(SortKey::InBits)),
    ("OUT BIT/S", 10, Some(SortKey::OutBits)),
    ("BIT/S", 10, Some(SortKey::TotalBits)),
];

fn framed(title: String) -> Block<'static> {
    Block::new()
        .borders(Borders::ALL)
        .padding(Padding::horizontal(1))
        .title(title)
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).right_aligned())
}

fn eip_table(frame: &mut Frame, area: Rect, rows: &[&EipRate], now: &Top, sort: SortKey) {
    let header = Row::new(COLUMNS.iter().enumerate().map(|(i, (title, _, key))| {
        let title = if *key == Some(sort) {
            format!("{title}▼")
        } else {
            (*title).to_owned()
        };
        if i >= 3 {
            right(title)
        } else {
            Cell::from(title)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = COLUMNS.map(|(_, w, _)| match w {
        0 => Constraint::Fill(1),
        w => Constraint::Length(w),
    });
    let body = rows.iter().map(|r| {
        let f = |pick: fn(&Flow) -> f64| si(r.flow.as_ref().map(pick));
        Row::new([
            Cell::from(r.eip.to_string()),
            Cell::from(r.eni.clone()),
            Cell::from(r.mode.name()),
            right(f(|f| f.in_pps)),
            right(f(|f| f.out_pps)),
            right(f(Flow::total_pps)),
            right(f(|f| f.in_bps)),
            right(f(|f| f.out_bps)),
            right(f(Flow::total_bps)),
        ])
    });
    let title = format!(
        " EIPs: {} shown, {} matched of {} ",
        rows.len(),
        now.matched,
        now.associations
    );
    let table = Table::new(body, widths).header(header).block(framed(title));
    frame.render_widget(table, area);
}

fn drop_table(frame: &mut Frame, area: Rect, drops: &[DropRate]) {
    let mut drops = drops.to_vec();
    drops.sort_by(|a, b| b.pps.total_cmp(&a.pps));
    let header = Row::new([
        Cell::from("DIRECTION"),
        Cell::from("VERDICT"),
        right("PKT/S".into()),
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let body: Vec<Row> = if drops.is_empty() {
        vec![Row::new([Cell::from("(no drops)")])]
    } else {
        drops
            .iter()
            .map(|d| {
                Row::new([
                    Cell::from(d.direction.name()),
                    Cell::from(d.verdict.name()),
                    right(si(Some(d.pps))),
                ])
                .style(Style::new().fg(Color::Red))
            })
            .collect()
    };
    let widths = [
        Constraint::Length(10),
        Constraint::Length(32),
        Constraint::Length(10),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .block(framed(" drops by verdict ".into()));
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use eip_nat_common::Verdict;
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::top::{
        rates::tests::{drop_count, eip, sample},
        screen::{row, text},
    };

    #[test]
    fn si_prefixes() {
        assert_eq!(si(None), "-");
        assert_eq!(si(Some(0.0)), "0.0");
        assert_eq!(si(Some(200.0)), "200.0");
        assert_eq!(si(Some(999.9)), "999.9");
        assert_eq!(si(Some(999.96)), "1.0k");
        assert_eq!(si(Some(147_200.0)), "147.2k");
        assert_eq!(si(Some(2.5e9)), "2.5G");
    }

    fn draw(before: &Top, now: &Top, view: &View, width: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height_for(before, now))).unwrap();
        terminal.draw(|f| render(f, before, now, view)).unwrap();
        text(terminal.backend().buffer())
    }

    fn words<'a>(screen: &'a str, eip: &str) -> Vec<&'a str> {
        row(screen, eip).unwrap_or_else(|| panic!("no row of {eip}:\n{screen}"))
    }

    #[test]
    fn a_screen_shows_rates_drops_and_the_lag() {
        let before = sample(
            0,
            vec![
                eip(1, "eni-a", (0, 0), (0, 0)),
                eip(2, "eni-b", (0, 0), (0, 0)),
            ],
            vec![
                drop_count(Verdict::DropPublicUnlisted, 0),
                drop_count(Verdict::TranslatedRedirect, 0),
            ],
        );
        let now = sample(
            2_000_000_000,
            vec![
                eip(1, "eni-a", (400, 200), (36_800, 18_400)),
                eip(2, "eni-b", (0, 0), (0, 0)),
            ],
            vec![
                drop_count(Verdict::DropPublicUnlisted, 100),
                drop_count(Verdict::TranslatedRedirect, 1000),
            ],
        );
        let screen = draw(&before, &now, &View::default(), 120);
        assert_eq!(
            words(&screen, "203.0.113.1"),
            [
                "203.0.113.1",
                "eni-a",
                "nat",
                "200.0",
                "100.0",
                "300.0",
                "147.2k",
                "73.6k",
                "220.8k"
            ],
            "{screen}"
        );
        assert_eq!(words(&screen, "203.0.113.2")[3..], ["0.0"; 6], "{screen}");
        let drops: Vec<&str> = screen.lines().filter(|l| l.contains("inbound")).collect();
        assert_eq!(drops.len(), 1, "only dropping verdicts: {screen}");
        assert!(drops[0].contains("drop_public_unlisted"), "{screen}");
        assert!(drops[0].contains("50.0"), "{screen}");
        assert!(
            screen.contains("generation 9, datapath at 7 (lag 2)"),
            "{screen}"
        );
        assert!(screen.contains("rates over 2.00 s"), "{screen}");
        assert!(
            screen.contains("BIT/S▼"),
            "the sort column is marked: {screen}"
        );

        // Filtered to eni-b: one row.
        let view = View {
            filter: "ENI-B".into(),
            ..View::default()
        };
        let screen = draw(&before, &now, &view, 120);
        assert!(!screen.contains("203.0.113.1 "), "{screen}");
        assert!(screen.contains("203.0.113.2 "), "{screen}");
        assert!(screen.contains("filter: \"ENI-B\""), "{screen}");
        assert!(screen.contains("EIPs: 1 shown"), "{screen}");
    }
}
