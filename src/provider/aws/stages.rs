//! Stage → VersionId of one secret, as AWS answers it: nearly always AWSCURRENT and perhaps AWSPREVIOUS. A
//! `BTreeMap`'s first node has room for eleven, 640 bytes for each secret watched and each one a check sees.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stages(Vec<(String, String)>);

impl Stages {
    pub fn get(&self, stage: &str) -> Option<&String> {
        self.0.iter().find(|(s, _)| s == stage).map(|(_, id)| id)
    }

    pub fn contains_key(&self, stage: &str) -> bool {
        self.get(stage).is_some()
    }

    /// Points `stage` at `id`; returns where it pointed before.
    pub fn insert(&mut self, stage: &str, id: &str) -> Option<String> {
        match self.0.iter_mut().find(|(s, _)| s == stage) {
            Some((_, old)) => Some(std::mem::replace(old, id.to_string())),
            None => {
                // `push` alone makes room for four.
                self.0.reserve_exact(1);
                self.0.push((stage.to_string(), id.to_string()));
                None
            }
        }
    }

    /// Where `stage` points, pointing it at `id` first if it is not known.
    pub fn get_or_insert(&mut self, stage: &str, id: &str) -> &String {
        if !self.contains_key(stage) {
            self.insert(stage, id);
        }
        self.get(stage).expect("just inserted")
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&String) -> bool) {
        self.0.retain(|(stage, _)| keep(stage));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(stage, id)| (stage, id))
    }
}

impl FromIterator<(String, String)> for Stages {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut stages = Stages::default();
        for (stage, id) in pairs {
            stages.insert(&stage, &id);
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_version_per_stage() {
        let mut stages: Stages = [("AWSCURRENT", "v1"), ("AWSPREVIOUS", "v0")]
            .into_iter()
            .map(|(stage, id)| (stage.to_string(), id.to_string()))
            .collect();
        assert_eq!(stages.insert("AWSCURRENT", "v2").as_deref(), Some("v1"));
        assert_eq!(stages.get("AWSCURRENT").map(String::as_str), Some("v2"));
        assert_eq!(stages.get_or_insert("AWSCURRENT", "v3"), "v2");
        assert_eq!(stages.get_or_insert("AWSPENDING", "v3"), "v3");
        stages.retain(|stage| stage != "AWSPREVIOUS");
        assert!(!stages.contains_key("AWSPREVIOUS"));
        assert_eq!(stages.iter().count(), 2);
    }
}
