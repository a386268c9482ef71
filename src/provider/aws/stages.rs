//! Stage → VersionId of one secret, as AWS answers it: nearly always AWSCURRENT and perhaps AWSPREVIOUS. A
//! `BTreeMap`'s first node has room for eleven, 640 bytes for each secret watched and each one a check sees.

/// Sorted by stage, as a `BTreeMap` would be: a check applies the stages it saw in this order, and where a
/// stage moved from matters for the next (AWSCURRENT's old version is AWSPREVIOUS's new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stages(Vec<(String, String)>);

impl Stages {
    fn position(&self, stage: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(s, _)| s.as_str().cmp(stage))
    }

    pub fn get(&self, stage: &str) -> Option<&String> {
        self.position(stage).ok().map(|at| &self.0[at].1)
    }

    pub fn contains_key(&self, stage: &str) -> bool {
        self.get(stage).is_some()
    }

    /// Points `stage` at `id`; returns where it pointed before.
    pub fn insert(&mut self, stage: &str, id: &str) -> Option<String> {
        match self.position(stage) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, id.to_string())),
            Err(at) => {
                // Growing by itself makes room for four.
                self.0.reserve_exact(1);
                self.0.insert(at, (stage.to_string(), id.to_string()));
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
        let mut stages: Stages = [("AWSPREVIOUS", "v0"), ("AWSCURRENT", "v1")]
            .into_iter()
            .map(|(stage, id)| (stage.to_string(), id.to_string()))
            .collect();
        assert_eq!(stages.insert("AWSCURRENT", "v2").as_deref(), Some("v1"));
        assert_eq!(stages.get("AWSCURRENT").map(String::as_str), Some("v2"));
        assert_eq!(stages.get_or_insert("AWSCURRENT", "v3"), "v2");
        assert_eq!(stages.get_or_insert("AWSPENDING", "v3"), "v3");
        let order: Vec<&String> = stages.iter().map(|(stage, _)| stage).collect();
        assert_eq!(order, ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"]);
        stages.retain(|stage| stage != "AWSPREVIOUS");
        assert!(!stages.contains_key("AWSPREVIOUS"));
        assert_eq!(stages.iter().count(), 2);
    }
}
