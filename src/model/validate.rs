//! Checks a schema cannot express: fields that exclude each other, rules across fields, and the
//! checks real dstack makes later on its server (name pattern, volume size or id, fleet `nodes`
//! xor `ssh_config`, absolute `working_dir`), which we make at validation time, and ours
//! (`working_dir` without `..`: on the host runtime it is a directory of the run's copy of the
//! project).
//!
//! Each problem carries the JSON pointer of the value it is about, so the loader can point at the
//! exact line and column.

use super::fleet::{FleetSpec, check_network};
use super::mounts::MountPoint;
use super::ports::{PortMapping, RESERVED_PORTS};
use super::profile::{BackendOptions, BackendType};
use super::run::{
    Artifact, HttpMethod, ReplicaGroup, RunCommon, RunFields, RunSpec, ServiceFields,
};
use super::volume::{VolumeBackend, VolumeSpec};
use super::{Spec, TagSpec, is_valid_name};

/// The directory the project is copied to; nothing may be mounted at or under it.
pub const WORKFLOW_DIR: &str = "/workflow";

/// One semantic problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// JSON pointer of the value (`/volumes/0`); empty for the whole document.
    pub pointer: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Issue {
    fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// What validation may depend on besides the document.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// `DSTACK_FAKE_BACKEND=1`: the test backend is allowed.
    pub fake_backend: bool,
}

/// Check a resource's name. `pointer` is `/name` when the name was written, empty when it came
/// from the file name.
pub fn check_name(name: &str, pointer: &str) -> Option<Issue> {
    if is_valid_name(name) {
        return None;
    }
    let issue = Issue::new(
        pointer,
        format!(
            "invalid name `{name}`: use a lowercase letter, then 1 to 40 lowercase letters, digits or `-`"
        ),
    );
    Some(if pointer.is_empty() {
        issue.hint(
            "the name comes from the file name; add `name:` to the document or rename the file",
        )
    } else {
        issue
    })
}

/// Every semantic problem of a spec.
pub fn check(spec: &Spec, context: Context) -> Vec<Issue> {
    let mut issues = Vec::new();
    match spec {
        Spec::Volume(volume) => check_volume(volume, context, &mut issues),
        Spec::Run(run) => check_run(run, context, &mut issues),
        Spec::Fleet(fleet) => check_fleet(fleet, context, &mut issues),
        Spec::Tag(tag) => check_tag(tag, &mut issues),
    }
    issues
}

fn check_backends(backends: Option<&Vec<BackendType>>, context: Context, issues: &mut Vec<Issue>) {
    for (i, backend) in backends.into_iter().flatten().enumerate() {
        if *backend == BackendType::Fake && !context.fake_backend {
            issues.push(
                Issue::new(
                    format!("/backends/{i}"),
                    "the `fake` backend is for tests only",
                )
                .hint("set DSTACK_FAKE_BACKEND=1 to use it"),
            );
        }
    }
}

fn check_volume(volume: &VolumeSpec, context: Context, issues: &mut Vec<Issue>) {
    let backend = volume.backend;
    if backend == VolumeBackend::Fake && !context.fake_backend {
        issues.push(
            Issue::new("/backend", "the `fake` backend is for tests only")
                .hint("set DSTACK_FAKE_BACKEND=1 to use it"),
        );
    }
    for field in volume.fields_set() {
        if !backend.allows(field) {
            issues.push(Issue::new(
                format!("/{field}"),
                format!(
                    "`{field}` is not a property of `backend: {}` volumes",
                    backend.as_str()
                ),
            ));
        }
    }
    if backend.requires_region() && volume.region.is_none() {
        issues.push(
            Issue::new(
                "",
                format!(
                    "missing required property `region` (needed by `backend: {}`)",
                    backend.as_str()
                ),
            )
            .hint("add `region:`, e.g. `region: us-east-1`"),
        );
    }
    if backend.allows("size") && volume.size.is_none() && volume.external_id().is_none() {
        issues.push(
            Issue::new("", "a volume needs `size` (to create one) or `volume_id` (to register an existing one)")
                .hint("add e.g. `size: 100GB`"),
        );
    }
    if let Some(size) = volume.size
        && (size.0 <= 0.0 || !size.0.is_finite())
    {
        issues.push(Issue::new(
            "/size",
            format!("the size must be positive, found {size}"),
        ));
    }
    if volume.external_id().is_some()
        && volume
            .auto_cleanup_duration
            .and_then(super::quantity::IdleDuration::duration)
            .is_some_and(|d| d.0 > 0)
    {
        issues.push(Issue::new(
            "/auto_cleanup_duration",
            "a registered (external) volume cannot have `auto_cleanup_duration`: dstack never deletes it",
        ));
    }
}

fn check_tag(tag: &TagSpec, issues: &mut Vec<Issue>) {
    let ok = !tag.run.is_empty()
        && tag.run.starts_with(|c: char| c.is_ascii_lowercase())
        && tag
            .run
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        issues.push(Issue::new(
            "/run",
            format!("invalid run name `{}`", tag.run),
        ));
    }
}

fn check_fleet(fleet: &FleetSpec, context: Context, issues: &mut Vec<Issue>) {
    check_backends(fleet.backends.as_ref(), context, issues);
    match (&fleet.nodes, &fleet.ssh_config) {
        (None, None) => issues.push(
            Issue::new(
                "",
                "a fleet needs `nodes` (a cloud fleet) or `ssh_config` (existing hosts)",
            )
            .hint("add e.g. `nodes: 1`"),
        ),
        (Some(_), Some(_)) => issues.push(Issue::new(
            "/ssh_config",
            "`nodes` and `ssh_config` are mutually exclusive",
        )),
        (None, Some(ssh)) => {
            let cloud_only: Vec<&str> = [
                ("reservation", fleet.reservation.is_some()),
                ("resources", fleet.resources.is_some()),
                ("backends", fleet.backends.is_some()),
                ("regions", fleet.regions.is_some()),
                ("availability_zones", fleet.availability_zones.is_some()),
                ("instance_types", fleet.instance_types.is_some()),
                ("spot_policy", fleet.spot_policy.is_some()),
                ("retry", fleet.retry.is_some()),
                ("max_price", fleet.max_price.is_some()),
                ("idle_duration", fleet.idle_duration.is_some()),
                ("tags", fleet.tags.is_some()),
                ("backend_options", fleet.backend_options.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            for field in cloud_only {
                issues.push(Issue::new(
                    format!("/{field}"),
                    format!("`{field}` is not supported by SSH fleets"),
                ));
            }
            if let Some(network) = &ssh.network
                && let Err(e) = check_network(network)
            {
                issues.push(Issue::new("/ssh_config/network", e));
            }
        }
        (Some(_), None) => {
            if !fleet.env.is_empty() {
                issues.push(Issue::new("/env", "`env` is supported by SSH fleets only"));
            }
        }
    }
    if let Some(price) = fleet.max_price
        && price.0 <= 0.0
    {
        issues.push(Issue::new(
            "/max_price",
            "`max_price` must be greater than 0",
        ));
    }
    check_backend_options(fleet.backend_options.as_deref(), issues);
}

/// `backend_options`: one entry per backend (only `vastai` has options), reliability in 0..1.
fn check_backend_options(options: Option<&[BackendOptions]>, issues: &mut Vec<Issue>) {
    let options = options.unwrap_or_default();
    if options.len() > 1 {
        issues.push(Issue::new(
            "/backend_options",
            "`backend_options` has more than one entry for `vastai`",
        ));
    }
    for (i, option) in options.iter().enumerate() {
        if let Some(reliability) = option.min_reliability
            && !(0.0..=1.0).contains(&reliability.0)
        {
            issues.push(Issue::new(
                format!("/backend_options/{i}/min_reliability"),
                format!("`min_reliability` must be from 0 to 1, found {reliability}"),
            ));
        }
    }
}

fn check_common(run: &RunSpec, context: Context, issues: &mut Vec<Issue>) {
    let common: &RunCommon = &run.common;
    let truthy = |s: &Option<String>| s.as_ref().is_some_and(|s| !s.is_empty());
    let flag = |f: Option<super::lenient::Flag>| f.is_some_and(|f| f.0);
    if common.python.is_some() && truthy(&common.image) {
        issues.push(Issue::new(
            "/python",
            "`image` and `python` are mutually exclusive",
        ));
    }
    if flag(common.docker) {
        for (field, set) in [
            ("image", truthy(&common.image)),
            ("python", common.python.is_some()),
            ("nvcc", flag(common.nvcc)),
        ] {
            if set {
                issues.push(Issue::new(
                    "/docker",
                    format!("`{field}` and `docker` are mutually exclusive"),
                ));
            }
        }
    }
    if let Some(dir) = &common.working_dir {
        if !dir.starts_with('/') && !dir.starts_with('~') {
            issues.push(Issue::new(
                "/working_dir",
                format!("`working_dir` must be an absolute path, found `{dir}`"),
            ));
        } else if dir.split('/').any(|part| part == "..") {
            // On the host runtime the working directory is a directory of the run's copy of
            // the project: `..` would put (and create) it anywhere on the machine.
            issues.push(Issue::new(
                "/working_dir",
                format!(
                    "`..` is not allowed in `working_dir`, found `{dir}`; write the directory without it"
                ),
            ));
        }
    }
    if common.repos.len() > 1 {
        issues.push(Issue::new("/repos", "at most one repo is supported"));
    }
    if let Some(price) = common.max_price
        && price.0 <= 0.0
    {
        issues.push(Issue::new(
            "/max_price",
            "`max_price` must be greater than 0",
        ));
    }
    if let Some(policy) = &common.utilization_policy
        && policy.time_window.0 < 300
    {
        issues.push(Issue::new(
            "/utilization_policy/time_window",
            "`time_window` must be at least `5m`",
        ));
    }
    if common.instances.as_ref().is_some_and(Vec::is_empty) {
        issues.push(Issue::new(
            "/instances",
            "`instances` must list at least one instance",
        ));
    }
    check_backend_options(common.backend_options.as_deref(), issues);
    check_backends(common.backends.as_ref(), context, issues);
    check_mounts(&common.volumes, issues);
    check_artifacts(&common.artifacts, issues);
}

fn check_mounts(mounts: &[MountPoint], issues: &mut Vec<Issue>) {
    let mut seen_paths: Vec<&str> = Vec::new();
    let mut seen_volumes: Vec<&str> = Vec::new();
    for (i, mount) in mounts.iter().enumerate() {
        let pointer = format!("/volumes/{i}");
        let path = mount.path();
        if path == WORKFLOW_DIR || path.starts_with(&format!("{WORKFLOW_DIR}/")) {
            issues.push(
                Issue::new(
                    &pointer,
                    format!("nothing may be mounted at or under `{WORKFLOW_DIR}`, found `{path}`"),
                )
                .hint(
                    "the project is copied to /workflow; mount the volume elsewhere, e.g. `/data`",
                ),
            );
        }
        if path.contains('\0') || (path.len() > 1 && path.ends_with('/')) {
            issues.push(Issue::new(&pointer, format!("invalid mount path `{path}`")));
        }
        if seen_paths.contains(&path) {
            issues.push(Issue::new(&pointer, format!("two mounts at `{path}`")));
        }
        seen_paths.push(path);
        if let MountPoint::Volume { names, .. } = mount {
            if names.is_empty() {
                issues.push(Issue::new(
                    &pointer,
                    "a volume mount needs at least one volume name",
                ));
            }
            for name in names {
                if seen_volumes.contains(&name.as_str()) {
                    issues.push(Issue::new(
                        &pointer,
                        format!("the volume `{name}` is mounted twice"),
                    ));
                }
                seen_volumes.push(name);
                if !name.contains("${{") && !is_valid_name(name) {
                    issues.push(Issue::new(
                        &pointer,
                        format!("invalid volume name `{name}`"),
                    ));
                }
            }
        }
    }
}

fn check_artifacts(artifacts: &[Artifact], issues: &mut Vec<Issue>) {
    for (i, artifact) in artifacts.iter().enumerate() {
        if artifacts[..i].iter().any(|a| a.path == artifact.path) {
            issues.push(Issue::new(
                format!("/artifacts/{i}"),
                format!("the artifact path `{}` is listed twice", artifact.path),
            ));
        }
    }
}

fn check_ports(ports: &[PortMapping], pointer: &str, issues: &mut Vec<Issue>) {
    for (i, port) in ports.iter().enumerate() {
        let reserved_local = port.local_port.is_some_and(|p| RESERVED_PORTS.contains(&p));
        if RESERVED_PORTS.contains(&port.container_port)
            && (port.local_port == Some(port.container_port) || reserved_local)
        {
            issues.push(
                Issue::new(
                    format!("{pointer}/{i}"),
                    format!(
                        "port {} is reserved for dstack (10000-10999)",
                        port.container_port
                    ),
                )
                .hint(format!(
                    "map it to another local port, e.g. `{}:{}`",
                    8000 + port.container_port % 1000,
                    port.container_port
                )),
            );
        } else if reserved_local {
            issues.push(Issue::new(
                format!("{pointer}/{i}"),
                format!(
                    "local port {} is reserved for dstack (10000-10999)",
                    port.local_port.unwrap_or_default()
                ),
            ));
        }
    }
}

fn check_run(run: &RunSpec, context: Context, issues: &mut Vec<Issue>) {
    check_common(run, context, issues);
    let has_image = run.common.image.as_ref().is_some_and(|i| !i.is_empty());
    match &run.fields {
        RunFields::Task(task) => {
            check_ports(&task.ports, "/ports", issues);
            match &task.groups {
                Some(groups) => {
                    if task.nodes.is_some() {
                        issues.push(Issue::new(
                            "/nodes",
                            "`nodes` and `groups` are mutually exclusive",
                        ));
                    }
                    if groups.is_empty() {
                        issues.push(Issue::new("/groups", "`groups` cannot be an empty list"));
                    }
                    let mut names = Vec::new();
                    for (i, group) in groups.iter().enumerate() {
                        let name = group.name.clone().unwrap_or_else(|| i.to_string());
                        if group.name.is_some() && !is_group_name(&name) {
                            issues.push(Issue::new(
                                format!("/groups/{i}/name"),
                                format!(
                                    "invalid group name `{name}`: use `^[a-z0-9][a-z0-9-]{{0,39}}$`"
                                ),
                            ));
                        }
                        if names.contains(&name) {
                            issues.push(Issue::new(
                                format!("/groups/{i}"),
                                format!("duplicate node group name `{name}`"),
                            ));
                        }
                        if group.commands.is_empty() && !has_image {
                            issues.push(Issue::new(format!("/groups/{i}"), format!("node group `{name}`: set `commands` in the group, or `image` on the task")));
                        }
                        check_ports(&group.ports, &format!("/groups/{i}/ports"), issues);
                        names.push(name);
                    }
                    for (field, set) in [
                        ("commands", !task.commands.is_empty()),
                        ("ports", !task.ports.is_empty()),
                        ("entrypoint", run.common.entrypoint.is_some()),
                    ] {
                        if set {
                            issues.push(Issue::new(format!("/{field}"), format!("top-level `{field}` is not allowed with `groups`; set `commands` in each node group")));
                        }
                    }
                }
                None => {
                    if task.commands.is_empty() && !has_image {
                        issues.push(
                            Issue::new("", "a task needs `commands` or `image`")
                                .hint("add `commands:` with the shell commands to run"),
                        );
                    }
                }
            }
        }
        RunFields::DevEnvironment(dev) => {
            check_ports(&dev.ports, "/ports", issues);
            if run.common.entrypoint.is_some() {
                issues.push(Issue::new(
                    "/entrypoint",
                    "`entrypoint` is not supported by dev environments",
                ));
            }
            if dev.version.as_ref().is_some_and(|v| !v.is_empty()) && dev.ide.is_none() {
                issues.push(Issue::new("/version", "`version` requires `ide`"));
            }
            if dev.ide == Some(super::run::Ide::Windsurf)
                && let Some(version) = dev.version.as_ref().filter(|v| !v.is_empty())
            {
                let ok = version.split_once('@').is_some_and(|(v, commit)| {
                    !v.is_empty()
                        && !commit.is_empty()
                        && commit
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
                if !ok {
                    issues.push(Issue::new(
                        "/version",
                        format!("invalid Windsurf version `{version}`: expected `VERSION@COMMIT`"),
                    ));
                }
            }
            let inactivity = dev
                .inactivity_duration
                .and_then(super::quantity::OffDuration::duration);
            if run.common.dstack.is_some_and(|f| f.0) && inactivity.is_some() {
                issues.push(Issue::new(
                    "/inactivity_duration",
                    "`dstack` is not supported together with `inactivity_duration`",
                ));
            }
        }
        RunFields::Service(service) => check_service(service, has_image, run, issues),
    }
}

fn is_group_name(name: &str) -> bool {
    name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn check_replicas(
    range: super::quantity::Range<i64>,
    scaling: bool,
    pointer: &str,
    issues: &mut Vec<Issue>,
) {
    let Some(max) = range.max else {
        issues.push(Issue::new(
            pointer,
            "the maximum number of replicas is required, e.g. `0..4`",
        ));
        return;
    };
    let min = range.min.unwrap_or(0);
    if min < 0 {
        issues.push(Issue::new(
            pointer,
            "the minimum number of replicas must be at least 0",
        ));
    }
    if min != max && !scaling {
        issues.push(
            Issue::new(pointer, "a range of `replicas` needs `scaling`")
                .hint("add `scaling: {metric: rps, target: 10}`"),
        );
    }
    if min == max && scaling {
        issues.push(Issue::new(
            pointer,
            "`scaling` needs `replicas` to be a range, e.g. `1..4`",
        ));
    }
}

fn check_scaling(scaling: &super::run::Scaling, pointer: &str, issues: &mut Vec<Issue>) {
    if scaling.target.0 <= 0.0 {
        issues.push(Issue::new(
            format!("{pointer}/target"),
            "`target` must be greater than 0",
        ));
    }
    if let Some(window) = scaling.window
        && ![30, 60, 300].contains(&window.0)
    {
        issues.push(Issue::new(
            format!("{pointer}/window"),
            "`window` must be one of `30s`, `60s`, `300s`",
        ));
    }
}

fn check_service(service: &ServiceFields, has_image: bool, run: &RunSpec, issues: &mut Vec<Issue>) {
    let legacy_groups = matches!(service.replicas, Some(super::run::Replicas::Groups(_)));
    if service.groups.is_some() && service.replicas.is_some() {
        issues.push(Issue::new(
            "/replicas",
            "`replicas` and `groups` are mutually exclusive",
        ));
    }
    if let Some(scaling) = &service.scaling {
        check_scaling(scaling, "/scaling", issues);
    }
    if let Some(super::run::Replicas::Range(range)) = service.replicas {
        check_replicas(range, service.scaling.is_some(), "/replicas", issues);
    }
    match service.replica_groups() {
        Some(groups) => {
            let base = if legacy_groups {
                "/replicas"
            } else {
                "/groups"
            };
            check_replica_groups(groups, base, has_image, run, issues);
            if service.scaling.is_some() {
                issues.push(Issue::new("/scaling", "top-level `scaling` is not allowed with `groups`; set it in each replica group"));
            }
            if !service.commands.is_empty() {
                issues.push(Issue::new("/commands", "top-level `commands` is not allowed with `groups`; set them in each replica group"));
            }
        }
        None => {
            if service.commands.is_empty() && !has_image {
                issues.push(
                    Issue::new("", "a service needs `commands` or `image`")
                        .hint("add `commands:` that start the server"),
                );
            }
        }
    }
    if let Some(probes) = &service.probes {
        for (i, probe) in probes.iter().enumerate() {
            let pointer = format!("/probes/{i}");
            if let Some(url) = &probe.url {
                if !url.starts_with('/') {
                    issues.push(Issue::new(
                        format!("{pointer}/url"),
                        "a probe `url` must start with `/`",
                    ));
                } else if url.len() > 2048 {
                    issues.push(Issue::new(
                        format!("{pointer}/url"),
                        "a probe `url` cannot be longer than 2048 characters",
                    ));
                } else if url
                    .chars()
                    .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
                {
                    issues.push(Issue::new(
                        format!("{pointer}/url"),
                        "a probe `url` cannot contain non-printable characters",
                    ));
                }
            }
            for (field, value) in [("timeout", probe.timeout), ("interval", probe.interval)] {
                if value.is_some_and(|d| d.0 < 1) {
                    issues.push(Issue::new(
                        format!("{pointer}/{field}"),
                        format!("a probe `{field}` cannot be shorter than 1s"),
                    ));
                }
            }
            if probe.body.is_some()
                && matches!(probe.method, Some(HttpMethod::Get | HttpMethod::Head))
            {
                issues.push(Issue::new(
                    format!("{pointer}/body"),
                    "a probe with method `get` or `head` cannot have a body",
                ));
            }
            if probes[..i].contains(probe) {
                issues.push(Issue::new(pointer, "probes must be unique"));
            }
        }
    }
    let mut prefixes = Vec::new();
    for (i, limit) in service.rate_limits.iter().enumerate() {
        let prefix = limit.prefix.clone().unwrap_or_else(|| "/".into());
        if prefixes.contains(&prefix) {
            issues.push(Issue::new(
                format!("/rate_limits/{i}"),
                format!("the prefix `{prefix}` has more than one rate limit"),
            ));
        }
        prefixes.push(prefix);
        if limit.rps.0 < 1.0 / 60.0 {
            issues.push(Issue::new(
                format!("/rate_limits/{i}/rps"),
                "`rps` must be at least 1/60 (one request per minute)",
            ));
        }
        // dstack's bound: the most a 64-bit nanosecond interval between requests can express.
        if limit.rps.0 > 153_722_867_280_912_930.0 {
            issues.push(Issue::new(
                format!("/rate_limits/{i}/rps"),
                format!(
                    "`rps` must be at most 153722867280912930, found {}",
                    limit.rps
                ),
            ));
        }
    }
}

fn check_replica_groups(
    groups: &[ReplicaGroup],
    base: &str,
    has_image: bool,
    run: &RunSpec,
    issues: &mut Vec<Issue>,
) {
    if groups.is_empty() {
        issues.push(Issue::new(base, "`groups` cannot be an empty list"));
        return;
    }
    let common = &run.common;
    let mut names = Vec::new();
    let mut routers = 0;
    for (i, group) in groups.iter().enumerate() {
        let pointer = format!("{base}/{i}");
        let name = group.name.clone().unwrap_or_else(|| i.to_string());
        if group.name.is_some() && !is_group_name(&name) {
            issues.push(Issue::new(
                format!("{pointer}/name"),
                format!("invalid replica group name `{name}`"),
            ));
        }
        if names.contains(&name) {
            issues.push(Issue::new(
                &pointer,
                format!("duplicate replica group name `{name}`"),
            ));
        }
        names.push(name.clone());
        match group.replica_range() {
            Some(range) => check_replicas(
                range,
                group.scaling.is_some(),
                &format!("{pointer}/replicas"),
                issues,
            ),
            None => issues.push(Issue::new(&pointer, "a replica group needs `replicas`")),
        }
        if let Some(scaling) = &group.scaling {
            check_scaling(scaling, &format!("{pointer}/scaling"), issues);
        }
        let flag = |f: Option<super::lenient::Flag>| f.is_some_and(|f| f.0);
        let group_image = group.image.as_ref().is_some_and(|i| !i.is_empty());
        if group.python.is_some() && group_image {
            issues.push(Issue::new(
                &pointer,
                "`image` and `python` are mutually exclusive within a replica group",
            ));
        }
        if flag(group.docker) {
            if group_image || group.python.is_some() || flag(group.nvcc) {
                issues.push(Issue::new(
                    &pointer,
                    "`docker` excludes `image`, `python` and `nvcc` within a replica group",
                ));
            }
            if group.privileged.is_some_and(|p| !p.0) {
                issues.push(Issue::new(&pointer, "`privileged: false` is incompatible with `docker: true` (docker-in-docker needs privileged mode)"));
            }
        }
        let both = [
            ("image", common.image.is_some(), group.image.is_some()),
            ("docker", flag(common.docker), group.docker.is_some()),
            (
                "privileged",
                flag(common.privileged),
                group.privileged.is_some(),
            ),
            ("python", common.python.is_some(), group.python.is_some()),
            ("nvcc", flag(common.nvcc), group.nvcc.is_some()),
            (
                "spot_policy",
                common.spot_policy.is_some(),
                group.spot_policy.is_some(),
            ),
            (
                "reservation",
                common.reservation.is_some(),
                group.reservation.is_some(),
            ),
        ];
        for (field, service_level, group_level) in both {
            if service_level && group_level {
                issues.push(Issue::new(&pointer, format!("`{field}` is set both on the service and in replica group `{name}`; set it in one place")));
            }
        }
        let sources = ["image", "docker", "python", "nvcc"];
        let service_sources = [
            common.image.is_some(),
            flag(common.docker),
            common.python.is_some(),
            flag(common.nvcc),
        ];
        let group_sources = [
            group.image.is_some(),
            group.docker.is_some(),
            group.python.is_some(),
            group.nvcc.is_some(),
        ];
        for (s, service_set) in sources.iter().zip(service_sources) {
            for (g, group_set) in sources.iter().zip(group_sources) {
                if s != g && service_set && group_set && !(*s == "image" && *g == "image") {
                    let compatible = matches!((*s, *g), ("python", "nvcc") | ("nvcc", "python"));
                    if !compatible {
                        issues.push(Issue::new(
                            &pointer,
                            format!(
                                "service-level `{s}` conflicts with `{g}` in replica group `{name}`"
                            ),
                        ));
                    }
                }
            }
        }
        if group.commands.is_empty() && !group_image && !has_image {
            issues.push(Issue::new(&pointer, format!("replica group `{name}`: set `commands` or `image` in the group, or `image` on the service")));
        }
        if group.router.is_some() {
            routers += 1;
            if group
                .replica_range()
                .is_some_and(|r| r.min != Some(1) || r.max != Some(1))
            {
                issues.push(Issue::new(
                    &pointer,
                    "a replica group with a `router` must have `replicas: 1`",
                ));
            }
        }
    }
    if routers > 1 {
        issues.push(Issue::new(
            base,
            "at most one replica group may have a `router`",
        ));
    }
}
