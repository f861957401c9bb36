//! Generated run names: `adjective-animal-N`, as legacy dstack named its runs (`grumpy-zebra-1`).
//!
//! The prefix is drawn at random; `N` is one more than the number of recorded runs with that
//! prefix, then raised until the name is free. A name is free when no run, run resource or tag
//! has it (run and tag names share one namespace), no run resource is named like the prefix
//! (its runs would be `PREFIX-N` too), and the caller's own check passes (the local backend's job
//! store of that name must not exist).

use crate::state::Snapshot;

/// 128 adjectives: lowercase ASCII letters only, so every name is a valid resource name.
pub const ADJECTIVES: [&str; 128] = [
    "able", "agile", "amber", "ample", "azure", "balmy", "bold", "brave", "breezy", "bright",
    "brisk", "bubbly", "busy", "calm", "candid", "cheery", "chilly", "clever", "cloudy", "cosy",
    "crisp", "curly", "dainty", "dapper", "daring", "dizzy", "dreamy", "dusty", "eager", "early",
    "easy", "elated", "epic", "fancy", "fast", "fearless", "fierce", "fluffy", "fond", "frosty",
    "funky", "fuzzy", "gentle", "giddy", "glad", "gleaming", "golden", "grand", "groovy", "grumpy",
    "happy", "hardy", "hasty", "hazy", "hearty", "humble", "icy", "jazzy", "jolly", "jumpy",
    "keen", "kind", "lanky", "lazy", "lively", "lofty", "loyal", "lucky", "lush", "mellow",
    "merry", "mighty", "misty", "modest", "moody", "nimble", "noble", "odd", "plucky", "polite",
    "proud", "quick", "quiet", "quirky", "rapid", "rosy", "rusty", "salty", "sandy", "shiny",
    "shy", "silent", "silky", "silly", "sleepy", "slim", "sly", "smart", "smooth", "snappy",
    "snowy", "soft", "spicy", "spry", "steady", "stormy", "sturdy", "sunny", "swift", "tall",
    "tame", "tidy", "tiny", "tough", "trusty", "vivid", "wacky", "warm", "wet", "wild", "windy",
    "wise", "witty", "wobbly", "young", "zany", "zealous", "zesty",
];

/// 128 animals, lowercase ASCII letters only.
pub const ANIMALS: [&str; 128] = [
    "albatross",
    "alpaca",
    "ant",
    "antelope",
    "badger",
    "bat",
    "bear",
    "beaver",
    "bee",
    "bison",
    "boar",
    "buffalo",
    "camel",
    "capybara",
    "caribou",
    "cat",
    "cheetah",
    "chicken",
    "cobra",
    "cougar",
    "cow",
    "coyote",
    "crab",
    "crane",
    "crow",
    "deer",
    "dingo",
    "dolphin",
    "donkey",
    "dove",
    "duck",
    "eagle",
    "eel",
    "elephant",
    "elk",
    "emu",
    "falcon",
    "ferret",
    "finch",
    "flamingo",
    "fox",
    "frog",
    "gazelle",
    "gecko",
    "gerbil",
    "giraffe",
    "gnu",
    "goat",
    "goose",
    "gopher",
    "gorilla",
    "hamster",
    "hare",
    "hawk",
    "hedgehog",
    "heron",
    "hippo",
    "hornet",
    "horse",
    "hyena",
    "ibex",
    "iguana",
    "impala",
    "jackal",
    "jaguar",
    "jay",
    "kangaroo",
    "kiwi",
    "koala",
    "lemur",
    "leopard",
    "lion",
    "llama",
    "lobster",
    "lynx",
    "magpie",
    "mangust",
    "marmot",
    "meerkat",
    "mink",
    "mole",
    "moose",
    "moth",
    "mouse",
    "mule",
    "newt",
    "octopus",
    "okapi",
    "orca",
    "ostrich",
    "otter",
    "owl",
    "ox",
    "panda",
    "panther",
    "parrot",
    "pelican",
    "penguin",
    "pigeon",
    "puffin",
    "puma",
    "quail",
    "rabbit",
    "raccoon",
    "raven",
    "reindeer",
    "rhino",
    "robin",
    "salmon",
    "seal",
    "shark",
    "sheep",
    "shrimp",
    "skunk",
    "sloth",
    "snail",
    "sparrow",
    "squid",
    "stork",
    "swan",
    "tapir",
    "tiger",
    "toad",
    "turtle",
    "walrus",
    "weasel",
    "wolf",
    "zebra",
];

/// Whether `name` is `PREFIX-N` for a number N.
fn numbered(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Whether a name is taken in state: a run, a resource of a kind that shares the run namespace,
/// or a tag.
fn taken_in_state(snapshot: &Snapshot, name: &str) -> bool {
    snapshot.runs.contains_key(name)
        || snapshot.tags.contains_key(name)
        || snapshot.resources.contains_key(&format!("run/{name}"))
        || snapshot.resources.contains_key(&format!("tag/{name}"))
}

/// The next free `PREFIX-N` for a prefix, with N counted as the module documentation says.
pub fn numbered_name(
    snapshot: &Snapshot,
    prefix: &str,
    taken: &dyn Fn(&str) -> bool,
) -> (String, u64) {
    let existing = snapshot
        .runs
        .keys()
        .filter(|name| numbered(name, prefix).is_some())
        .count() as u64;
    let mut number = existing + 1;
    loop {
        let name = format!("{prefix}-{number}");
        if !taken_in_state(snapshot, &name) && !taken(&name) {
            return (name, number);
        }
        number += 1;
    }
}

/// A fresh run name and its number. `pick(n)` returns an index below `n` (random in use, fixed in
/// tests); `taken` adds the caller's own check.
pub fn generate(
    snapshot: &Snapshot,
    taken: &dyn Fn(&str) -> bool,
    pick: &mut dyn FnMut(usize) -> usize,
) -> (String, u64) {
    let usable = |prefix: &str| !snapshot.resources.contains_key(&format!("run/{prefix}"));
    // A few random draws find a usable prefix unless nearly every one names a run resource;
    // then the first usable one in order is taken, so this always ends.
    let drawn = (0..32)
        .map(|_| {
            format!(
                "{}-{}",
                ADJECTIVES[pick(ADJECTIVES.len()) % ADJECTIVES.len()],
                ANIMALS[pick(ANIMALS.len()) % ANIMALS.len()]
            )
        })
        .find(|prefix| usable(prefix));
    let prefix = drawn.unwrap_or_else(|| {
        ADJECTIVES
            .iter()
            .flat_map(|a| ANIMALS.iter().map(move |b| format!("{a}-{b}")))
            .find(|prefix| usable(prefix))
            .unwrap_or_else(|| "ad-hoc".to_string())
    });
    numbered_name(snapshot, &prefix, taken)
}

/// A random index below `n`.
pub fn random_index(n: usize) -> usize {
    rand::random_range(0..n.max(1))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{ConfigType, is_valid_name};
    use crate::state::{RunRecord, RunStatus, TagRecord};

    fn run(name: &str) -> RunRecord {
        RunRecord {
            name: name.into(),
            resource: None,
            workflow: Some("w".into()),
            number: 1,
            run_type: ConfigType::Task,
            status: RunStatus::Done,
            backend: "local".into(),
            input_digest: String::new(),
            inputs: std::collections::BTreeMap::new(),
            spec: serde_json::json!({}),
            submitted_at: chrono::Utc::now(),
            finished_at: None,
            exit_code: None,
            message: None,
            job: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn word_lists_make_valid_distinct_names() {
        let adjectives: BTreeSet<&str> = ADJECTIVES.iter().copied().collect();
        let animals: BTreeSet<&str> = ANIMALS.iter().copied().collect();
        assert_eq!(adjectives.len(), ADJECTIVES.len(), "duplicate adjective");
        assert_eq!(animals.len(), ANIMALS.len(), "duplicate animal");
        for adjective in ADJECTIVES {
            for animal in ANIMALS {
                let name = format!("{adjective}-{animal}-1000");
                assert!(is_valid_name(&name), "{name}");
            }
        }
    }

    #[test]
    fn numbers_count_runs_with_the_prefix() {
        let mut snapshot = Snapshot::empty();
        let mut first = 0;
        let mut pick = |n: usize| {
            first += 1;
            (first - 1) % n
        };
        // First draw: adjective 0, animal 1 → `able-alpaca`.
        let (name, number) = generate(&snapshot, &|_| false, &mut pick);
        assert_eq!((name.as_str(), number), ("able-alpaca-1", 1));
        for existing in [
            "able-alpaca-1",
            "able-alpaca-2",
            "able-alpaca-x",
            "able-alpacas-1",
        ] {
            snapshot.runs.insert(existing.into(), run(existing));
        }
        let (name, number) = numbered_name(&snapshot, "able-alpaca", &|_| false);
        assert_eq!((name.as_str(), number), ("able-alpaca-3", 3));
    }

    #[test]
    fn names_skip_runs_tags_and_the_callers_own_check() {
        let mut snapshot = Snapshot::empty();
        // A gap: run 1 was deleted, run 2 remains; the count says 2, which is taken.
        snapshot.runs.insert("sly-fox-2".into(), run("sly-fox-2"));
        snapshot.tags.insert(
            "sly-fox-3".into(),
            TagRecord {
                name: "sly-fox-3".into(),
                run: "sly-fox-2".into(),
                manifest: None,
                created_at: chrono::Utc::now(),
            },
        );
        let (name, number) = numbered_name(&snapshot, "sly-fox", &|n| n == "sly-fox-4");
        assert_eq!((name.as_str(), number), ("sly-fox-5", 5));
    }

    #[test]
    fn a_prefix_that_names_a_run_resource_is_not_used() {
        let mut snapshot = Snapshot::empty();
        let record: crate::state::ResourceRecord = serde_json::from_value(serde_json::json!({
            "kind": "run", "name": "able-alpaca", "type": "task",
            "source": {"file": "a.dstack.yml", "document": 0}, "spec": {}, "digest": "",
            "backend": "local", "status": "done",
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"
        }))
        .expect("record");
        snapshot.resources.insert("run/able-alpaca".into(), record);
        let mut calls = 0;
        let mut pick = |n: usize| {
            calls += 1;
            // Draws 1–2 give `able-alpaca` (taken by the resource); draws 3–4 `agile-alpaca`.
            if calls <= 2 {
                calls - 1
            } else {
                (calls - 2) % n
            }
        };
        let (name, _) = generate(&snapshot, &|_| false, &mut pick);
        assert_eq!(name, "agile-ant-1");
    }
}
