//! One CLI subcommand per event, made from the event's JSON schema (the one
//! `openapi.json` holds), so the CLI has no list of events of its own:
//!
//! - an event `verb_noun` is `eip-nat NOUN VERB`, a one-word event
//!   `eip-nat VERB` (`create_eni` is `eip-nat eni create`);
//! - each field is a flag (`primary_ip` is `--primary-ip`), an object's
//!   fields flags of their own (`location` gives `--via` and `--dev`);
//! - the doc comments are the help, enums the possible values;
//! - the flags become the event's JSON, read by the same serde code as the
//!   API's.
//!
//! The model stays free of clap: adding an event to `model::Event` adds its
//! subcommand.

use std::{collections::BTreeMap, net::Ipv4Addr};

use clap::{
    builder::{PossibleValuesParser, ValueParser},
    error::ErrorKind,
    Arg, ArgMatches, Command, FromArgMatches, Subcommand,
};
use eip_nat::model::Event;
use serde_json::{Map, Value};

/// What the CLI defaults that the API requires: (event, field, value).
const DEFAULTS: &[(&str, &str, &str)] = &[("associate", "mode", "nat")];

/// An event, from its subcommand.
pub struct EventCommand(pub Event);

struct Spec {
    tag: String,
    /// `eni` for `create_eni`; none for `associate`.
    group: Option<String>,
    verb: String,
    about: Option<String>,
    fields: Vec<Field>,
}

struct Field {
    /// Where its value goes in the event's JSON: `["location", "via"]`.
    path: Vec<String>,
    required: bool,
    help: Option<String>,
    /// An enum's names; none for a free value.
    values: Option<Vec<String>>,
    ipv4: bool,
    default: Option<&'static str>,
}

impl Field {
    fn id(&self) -> &str {
        self.path.last().expect("a field has a name")
    }

    fn arg(&self, order: usize) -> Arg {
        let mut arg = Arg::new(self.id().to_string())
            .long(self.id().replace('_', "-"))
            .value_name(self.id().to_uppercase())
            .display_order(order)
            .required(self.required && self.default.is_none());
        if let Some(help) = &self.help {
            arg = arg.help(one_line(help));
        }
        if let Some(d) = self.default {
            arg = arg.default_value(d);
        }
        match &self.values {
            Some(values) => arg.value_parser(PossibleValuesParser::new(values)),
            None if self.ipv4 => arg.value_parser(ValueParser::new(|s: &str| {
                s.parse::<Ipv4Addr>().map(|_| s.to_string())
            })),
            None => arg,
        }
    }
}

/// A doc comment as clap shows its own: one line, no final full stop.
fn one_line(doc: &str) -> String {
    let line = doc.replace('\n', " ");
    line.strip_suffix('.').unwrap_or(&line).to_string()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Every event's subcommand, from `Event`'s schema.
fn specs() -> Vec<Spec> {
    let root: Value = schemars::schema_for!(Event).into();
    let defs = root.get("$defs").cloned().unwrap_or_default();
    let resolve = |v: &Value| -> Value {
        match text(v, "$ref").and_then(|r| r.rsplit('/').next().map(str::to_string)) {
            Some(name) => defs[&name].clone(),
            None => v.clone(),
        }
    };
    let mut specs = Vec::new();
    for variant in root["oneOf"].as_array().expect("Event is a tagged enum") {
        let tag = text(&variant["properties"]["event"], "const").expect("each event is named");
        let required: Vec<&str> = variant["required"]
            .as_array()
            .map_or(Vec::new(), |r| r.iter().filter_map(Value::as_str).collect());
        let mut fields = Vec::new();
        let properties = variant["properties"].as_object().expect("fields");
        for (name, schema) in properties.iter().filter(|(n, _)| *n != "event") {
            let schema = resolve(schema);
            let leaf = |path: Vec<String>, s: &Value, required: bool| Field {
                default: DEFAULTS
                    .iter()
                    .find(|(t, f, _)| *t == tag && Some(*f) == path.last().map(String::as_str))
                    .map(|d| d.2),
                path,
                required,
                help: text(s, "description"),
                values: s["oneOf"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|c| text(c, "const")).collect()),
                ipv4: text(s, "format").as_deref() == Some("ipv4"),
            };
            match schema.get("properties").and_then(Value::as_object) {
                Some(inner) => fields.extend(
                    inner
                        .iter()
                        .map(|(n, s)| leaf(vec![name.clone(), n.clone()], &resolve(s), false)),
                ),
                None => fields.push(leaf(
                    vec![name.clone()],
                    &schema,
                    required.contains(&name.as_str()),
                )),
            }
        }
        // The API's required fields first, in their order.
        fields.sort_by_key(|f| {
            let name = f.path[0].as_str();
            required
                .iter()
                .position(|r| *r == name)
                .unwrap_or(usize::MAX)
        });
        let (group, verb) = match tag.split_once('_') {
            Some((verb, noun)) => (Some(noun.to_string()), verb.to_string()),
            None => (None, tag.clone()),
        };
        specs.push(Spec {
            about: text(variant, "description"),
            tag,
            group,
            verb,
            fields,
        });
    }
    specs
}

impl Subcommand for EventCommand {
    fn augment_subcommands(mut cmd: Command) -> Command {
        let mut groups: BTreeMap<String, Command> = BTreeMap::new();
        for spec in specs() {
            let args = spec.fields.iter().enumerate().map(|(i, f)| f.arg(i));
            let mut sub = Command::new(spec.verb).args(args);
            if let Some(about) = spec.about {
                sub = sub.about(one_line(&about));
            }
            cmd = match spec.group {
                Some(g) => {
                    let group = groups.remove(&g).unwrap_or_else(|| {
                        Command::new(g.clone())
                            .about(format!("{g} events"))
                            .subcommand_required(true)
                    });
                    groups.insert(g, group.subcommand(sub));
                    cmd
                }
                None => cmd.subcommand(sub),
            };
        }
        groups.into_values().fold(cmd, Command::subcommand)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        specs()
            .iter()
            .any(|s| s.group.as_deref().unwrap_or(&s.verb) == name)
    }
}

impl FromArgMatches for EventCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::raw(ErrorKind::MissingSubcommand, "no event given\n");
        let (name, mut m) = matches.subcommand().ok_or_else(missing)?;
        let spec = specs().into_iter().find(|s| match &s.group {
            Some(g) => g == name && m.subcommand_name() == Some(&s.verb),
            None => s.verb == name,
        });
        let spec = spec.ok_or_else(missing)?;
        if spec.group.is_some() {
            m = m.subcommand().expect("found above").1;
        }
        let mut json = Map::new();
        json.insert("event".into(), spec.tag.into());
        for f in &spec.fields {
            let Some(value) = m.get_one::<String>(f.id()) else {
                continue;
            };
            let (last, parents) = f.path.split_last().expect("a field has a name");
            let mut at = &mut json;
            for p in parents {
                at = at
                    .entry(p.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("an object");
            }
            at.insert(last.clone(), value.clone().into());
        }
        serde_json::from_value(Value::Object(json))
            .map(Self)
            .map_err(|e| clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}
