//! Checks on the source tree's shape that no compiler makes: the datapath's
//! modules import each other without a cycle (parse → decide → rewrite →
//! icmp → forward, each using only what came before and the leaves).

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::cmd::root;

    /// `crate::x` modules each file of `dir` names, by module.
    fn imports(dir: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.extension().is_none_or(|x| x != "rs") || name == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // `use crate::{a, b::c, …}` or `crate::a::…` anywhere.
            let mut deps = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => top_level_items(group),
                    None => vec![rest],
                };
                for n in names {
                    let module: String = n
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != name {
                        deps.insert(module);
                    }
                }
            }
            graph.insert(name, deps);
        }
        graph
    }

    /// The comma-separated items of a `{…}` group up to its closing brace,
    /// nested groups kept inside their item.
    fn top_level_items(group: &str) -> Vec<&str> {
        let (mut depth, mut start, mut items) = (0, 0, Vec::new());
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(group[start..i].trim());
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(group[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        items
    }

    fn cycle_from(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            return Some(path[at..].to_vec());
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = cycle_from(graph, next, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }

    #[test]
    fn the_datapath_modules_have_no_import_cycle() {
        let graph = imports(&root().join("eip-nat-ebpf/src"));
        assert!(graph.contains_key("translate") && graph["translate"].contains("decide"));
        for node in graph.keys() {
            if let Some(c) = cycle_from(&graph, node, &mut Vec::new()) {
                panic!(
                    "import cycle among the datapath's modules: {}",
                    c.join(" → ")
                );
            }
        }
    }
}
