//! Two-word member ids, `adjective-animal` (`misty-owl`), from built-in word
//! lists: lowercase letters only, so every id passes the config rules.

use rand::seq::SliceRandom;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
    "fancy", "fluffy", "gentle", "glad", "golden", "happy", "humble", "jolly", "keen", "kind",
    "lively", "lucky", "merry", "mighty", "misty", "noble", "plucky", "proud", "quick", "quiet",
    "rapid", "rosy", "shiny", "silent", "silver", "snowy", "steady", "sunny", "swift", "witty",
];

const ANIMALS: &[&str] = &[
    "badger", "bear", "beaver", "bison", "crane", "deer", "dolphin", "eagle", "falcon", "ferret",
    "finch", "fox", "gecko", "heron", "ibis", "koala", "lark", "lemur", "lynx", "marten", "mole",
    "moose", "newt", "otter", "owl", "panda", "puffin", "quail", "raven", "robin", "seal", "shrew",
    "sparrow", "stoat", "swan", "tiger", "toad", "viper", "walrus", "wolf",
];

/// A random id not in `taken`; `None` only if (nearly) every combination is used.
pub fn generate(taken: &[&str]) -> Option<String> {
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let id = format!(
            "{}-{}",
            ADJECTIVES.choose(&mut rng)?,
            ANIMALS.choose(&mut rng)?
        );
        if !taken.contains(&id.as_str()) {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_unique() {
        let mut taken: Vec<String> = Vec::new();
        for _ in 0..200 {
            let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
            let id = generate(&refs).unwrap();
            assert!(!taken.contains(&id));
            let (a, b) = id.split_once('-').unwrap();
            assert!(a.bytes().all(|c| c.is_ascii_lowercase()));
            assert!(b.bytes().all(|c| c.is_ascii_lowercase()));
            taken.push(id);
        }
    }
}
