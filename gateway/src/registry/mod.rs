//! Registry: clusters, Workspaces, Deployments and metrics exports (SPEC §3).
