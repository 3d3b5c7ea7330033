//! The admin API's lists page and filter (`?limit=&after=&q=`, docs/registry.md
//! "Paging") on a gateway with 300 Deployments, each with its own export to
//! its own endpoint: every item once, in id order, whatever the page size.

use fanout_tests::fanout::{tempfile_dir::TempDir, Gateway};
use serde_json::Value;

const N: usize = 300;

fn registry() -> String {
    let mut y = String::from(
        "clusters:\n  - {id: cl, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: paging-token}\n\
         workspaces:\n  - {id: ws, organizationId: o, name: w}\ndeployments:\n",
    );
    for i in 0..N {
        y.push_str(&format!(
            "  - {{id: dep-{i:04}, workspaceId: ws, clusterId: cl, namespace: ns-{i:04}, type: HOSTED, name: team-{}}}\n",
            i % 7
        ));
    }
    y.push_str("metricsExports:\n");
    for i in 0..N {
        y.push_str(&format!(
            "  - {{id: exp-{i:04}, objectKey: exp-{i:04}, scope: DEPLOYMENT, scopeEntityId: dep-{i:04}, metricsExport: {{endpoint: 'http://127.0.0.1:9/tenant/{i:04}/api/v1/write'}}}}\n"
        ));
    }
    y
}

fn get(gw: &Gateway, path: &str) -> Value {
    let (status, body) = gw.request("GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Walks a list `limit` at a time: every id, and how many pages.
fn walk(gw: &Gateway, path: &str, limit: usize, q: &str) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let v = get(gw, &format!("{path}?limit={limit}&after={after}&q={q}"));
        pages += 1;
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match v["next"].as_str() {
            Some(n) => after = n.to_owned(),
            None => return (ids, pages),
        }
        assert!(pages <= N + 1, "the cursor must move on");
    }
}

#[test]
fn lists_page_in_id_order_and_filter() {
    let dir = TempDir::new("fanout-paging");
    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, registry()).unwrap();
    let gw = Gateway::start("paging", &["--registry", file.to_str().unwrap()]);

    let all = get(&gw, "/api/v1/deployments");
    assert_eq!(all["items"].as_array().unwrap().len(), N, "no limit: all");
    assert!(all.get("next").is_none());

    let want: Vec<String> = (0..N).map(|i| format!("dep-{i:04}")).collect();
    let (ids, pages) = walk(&gw, "/api/v1/deployments", 100, "");
    assert_eq!((ids, pages), (want, 3));

    // Targets: 300, in id order, each once.
    let (ids, pages) = walk(&gw, "/api/v1/targets", 64, "");
    assert_eq!(pages, 5);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in id order, each once");
    assert_eq!(ids.len(), N);

    // A filter on a field (the Deployment's name), then on a target's
    // endpoint and on its export.
    let (ids, _) = walk(&gw, "/api/v1/deployments", 10, "TEAM-3");
    let want: Vec<String> = (0..N)
        .filter(|i| i % 7 == 3)
        .map(|i| format!("dep-{i:04}"))
        .collect();
    assert_eq!(ids, want);
    let v = get(&gw, "/api/v1/targets?q=tenant/0042/");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert!(items[0]["endpoint"]
        .as_str()
        .unwrap()
        .contains("/tenant/0042/"));
    let v = get(&gw, "/api/v1/targets?q=exp-0007");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");

    // One export's status, paged by Deployment.
    let v = get(&gw, "/api/v1/metrics-exports/exp-0001/status?limit=10");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert!(v.get("next").is_none());
}
