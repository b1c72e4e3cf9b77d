//! What the viewer chose: the sort column, the filter (and the filter
//! being typed), and what the keys do to them.

use std::cmp::Ordering;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{filter, rates::EipRate};
use crate::api::TopSort;

/// The column the EIPs are sorted by: a rate, largest first, or the EIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    TotalBits,
    InBits,
    OutBits,
    TotalPackets,
    InPackets,
    OutPackets,
    Eip,
}

impl SortKey {
    const ALL: [SortKey; 7] = [
        Self::TotalBits,
        Self::InBits,
        Self::OutBits,
        Self::TotalPackets,
        Self::InPackets,
        Self::OutPackets,
        Self::Eip,
    ];

    /// The next column (`s`), round.
    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::TotalBits => "total bit/s",
            Self::InBits => "in bit/s",
            Self::OutBits => "out bit/s",
            Self::TotalPackets => "total pkt/s",
            Self::InPackets => "in pkt/s",
            Self::OutPackets => "out pkt/s",
            Self::Eip => "EIP",
        }
    }

    /// What the agent ranks by for this column: the top by packets for a
    /// packet column, by bytes otherwise.
    pub fn ranked_by(self) -> TopSort {
        match self {
            Self::TotalPackets | Self::InPackets | Self::OutPackets => TopSort::Packets,
            _ => TopSort::Bytes,
        }
    }

    /// The row's value in this column (None: not a rate, or not known).
    fn value(self, row: &EipRate) -> Option<f64> {
        let f = row.flow?;
        Some(match self {
            Self::TotalBits => f.total_bps(),
            Self::InBits => f.in_bps,
            Self::OutBits => f.out_bps,
            Self::TotalPackets => f.total_pps(),
            Self::InPackets => f.in_pps,
            Self::OutPackets => f.out_pps,
            Self::Eip => return None,
        })
    }

    /// Largest rate first, rows without one last; ties and the EIP column
    /// by address.
    fn order(self, a: &EipRate, b: &EipRate) -> Ordering {
        let by_rate = match (self.value(a), self.value(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_rate.then(a.eip.cmp(&b.eip))
    }
}

/// The viewer's choices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub sort: SortKey,
    /// The filter in effect (empty: none).
    pub filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    pub typing: Option<String>,
    /// The last failure to read a sample, shown until one succeeds.
    pub error: Option<String>,
}

/// What a key asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// Draw again.
    Redraw,
    /// The filter or the ranking changed: draw again, and ask the agent
    /// with the new query on the next sample.
    Query,
    Quit,
}

impl View {
    /// The filter the screen applies: the one being typed, if any.
    pub fn active_filter(&self) -> &str {
        self.typing.as_deref().unwrap_or(&self.filter)
    }

    /// The rows to show: those the filter matches, in the sort's order.
    pub fn rows<'a>(&self, rows: &'a [EipRate]) -> Vec<&'a EipRate> {
        let filter = self.active_filter();
        let mut shown: Vec<&EipRate> = rows
            .iter()
            .filter(|r| filter::matches(filter, r.eip, &r.eni))
            .collect();
        shown.sort_by(|a, b| self.sort.order(a, b));
        shown
    }

    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(typing) = &mut self.typing {
            return match key.code {
                KeyCode::Enter => {
                    self.filter = self.typing.take().unwrap_or_default();
                    Action::Query
                }
                KeyCode::Esc => {
                    self.typing = None;
                    Action::Redraw
                }
                KeyCode::Backspace => {
                    typing.pop();
                    Action::Redraw
                }
                KeyCode::Char(c) if !c.is_control() => {
                    typing.push(c);
                    Action::Redraw
                }
                _ => Action::None,
            };
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char('s') => {
                let before = self.sort.ranked_by();
                self.sort = self.sort.next();
                if self.sort.ranked_by() == before {
                    Action::Redraw
                } else {
                    Action::Query
                }
            }
            KeyCode::Char('/') => {
                self.typing = Some(self.filter.clone());
                Action::Redraw
            }
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{model::Mode, top::rates::Flow};

    fn row(last: u8, eni: &str, in_pps: f64, out_pps: f64) -> EipRate {
        EipRate {
            eip: Ipv4Addr::new(203, 0, 113, last),
            eni: eni.into(),
            mode: Mode::Nat,
            flow: Some(Flow {
                in_pps,
                out_pps,
                // 100-byte packets.
                in_bps: in_pps * 800.0,
                out_bps: out_pps * 800.0,
            }),
        }
    }

    fn order(view: &View, rows: &[EipRate]) -> Vec<u8> {
        view.rows(rows).iter().map(|r| r.eip.octets()[3]).collect()
    }

    fn press(view: &mut View, code: KeyCode) -> Action {
        view.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn sorts_by_the_column_largest_first_unknown_last() {
        let mut unknown = row(4, "eni-d", 0.0, 0.0);
        unknown.flow = None;
        let rows = [
            row(1, "eni-a", 10.0, 300.0),
            row(2, "eni-b", 200.0, 0.0),
            unknown,
            row(3, "eni-c", 100.0, 50.0),
        ];
        let mut view = View::default();
        assert_eq!(view.sort, SortKey::TotalBits, "the default");
        assert_eq!(order(&view, &rows), [1, 2, 3, 4]);
        let mut seen = vec![];
        for _ in 0..SortKey::ALL.len() {
            seen.push((view.sort, order(&view, &rows)));
            press(&mut view, KeyCode::Char('s'));
        }
        assert_eq!(view.sort, SortKey::TotalBits, "s cycles round");
        assert_eq!(
            seen,
            [
                (SortKey::TotalBits, vec![1, 2, 3, 4]),
                (SortKey::InBits, vec![2, 3, 1, 4]),
                (SortKey::OutBits, vec![1, 3, 2, 4]),
                (SortKey::TotalPackets, vec![1, 2, 3, 4]),
                (SortKey::InPackets, vec![2, 3, 1, 4]),
                (SortKey::OutPackets, vec![1, 3, 2, 4]),
                (SortKey::Eip, vec![1, 2, 3, 4]),
            ]
        );
        // Ties go by address.
        let tied = [row(9, "x", 1.0, 0.0), row(5, "y", 1.0, 0.0)];
        assert_eq!(order(&View::default(), &tied), [5, 9]);
    }

    #[test]
    fn the_sort_asks_the_agent_again_when_its_ranking_changes() {
        let mut view = View::default();
        let mut actions = vec![];
        for _ in 0..SortKey::ALL.len() {
            actions.push(press(&mut view, KeyCode::Char('s')));
        }
        use Action::{Query, Redraw};
        // → in bits, out bits, total pkts (packets), in, out pkts, EIP
        // (bytes), total bits.
        assert_eq!(
            actions,
            [Redraw, Redraw, Query, Redraw, Redraw, Query, Redraw]
        );
    }

    #[test]
    fn slash_types_a_filter_applied_as_typed() {
        let rows = [
            row(1, "eni-web", 1.0, 0.0),
            row(2, "eni-db", 2.0, 0.0),
            row(12, "eni-cache", 3.0, 0.0),
        ];
        let mut view = View::default();
        assert_eq!(press(&mut view, KeyCode::Char('/')), Action::Redraw);
        for c in "113.1".chars() {
            press(&mut view, KeyCode::Char(c));
        }
        // While typing, `q` is text and the screen already filters.
        assert_eq!(order(&view, &rows), [12, 1]);
        press(&mut view, KeyCode::Backspace);
        press(&mut view, KeyCode::Backspace);
        for c in "DB".chars() {
            press(&mut view, KeyCode::Char(c));
        }
        assert_eq!(view.active_filter(), "113DB");
        assert!(order(&view, &rows).is_empty());
        // Esc abandons the typing, the old (empty) filter stays.
        assert_eq!(press(&mut view, KeyCode::Esc), Action::Redraw);
        assert_eq!(order(&view, &rows), [12, 2, 1]);
        press(&mut view, KeyCode::Char('/'));
        for c in "db".chars() {
            press(&mut view, KeyCode::Char(c));
        }
        assert_eq!(press(&mut view, KeyCode::Char('q')), Action::Redraw);
        press(&mut view, KeyCode::Backspace);
        assert_eq!(press(&mut view, KeyCode::Enter), Action::Query);
        assert_eq!(view.filter, "db");
        assert_eq!(view.typing, None);
        assert_eq!(order(&view, &rows), [2]);
        // Not typing: q and Esc quit.
        assert_eq!(press(&mut view, KeyCode::Char('q')), Action::Quit);
        assert_eq!(press(&mut view, KeyCode::Esc), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(view.key(ctrl_c), Action::Quit);
    }
}
