//! `fanout-load print-registry` writes a registry the gateway takes: every
//! simulated cluster with its token, every Deployment with the generator's
//! namespace, routed to every target.

use fanout_gateway::registry::model::{Document, Registry};
use fanout_gateway::registry::resolve::effective_exports;
use fanout_loadtest::scenario::Scenario;

#[test]
fn print_registry_output_loads_and_routes_every_deployment() {
    let scenario = Scenario {
        clusters: 3,
        deployments: 2,
        ..Scenario::default()
    };
    let targets = vec![
        "http://127.0.0.1:9201/api/v1/write".to_owned(),
        "http://127.0.0.1:9202/api/v1/write".to_owned(),
    ];
    let doc = fanout_loadtest::bench::config::registry_for(&scenario, &targets);
    let yaml = serde_yaml_ng::to_string(&doc).unwrap();
    let parsed = Document::parse(yaml.as_bytes(), true).expect("the gateway parses it");
    let registry = Registry::from_document(parsed).expect("the gateway loads it");
    assert!(fanout_gateway::registry::validate::validate(&registry).is_ok());
    assert_eq!(registry.clusters.len(), 3);
    for c in 0..3 {
        let cluster = &registry.clusters[&scenario.cluster_id(c)];
        assert!(cluster.ingest_token.matches(&scenario.cluster_token(c)));
        for d in 0..2 {
            let id = scenario.deployment_id(c, d);
            assert_eq!(
                registry.deployments[&id].namespace,
                scenario.namespace(c, d)
            );
            let exports = effective_exports(&registry, &id, b"salt");
            let mut endpoints: Vec<_> = exports
                .iter()
                .filter_map(|e| e.fields.endpoint.clone())
                .collect();
            endpoints.sort();
            assert_eq!(endpoints, targets, "{id}");
        }
    }
}
