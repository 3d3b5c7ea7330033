//! Every error kind of the scanner and the 2.0 reader, each with its exact
//! message (the text ingest returns in a 400 or 413 body).

use bytes::Bytes;
use fanout_proto::scan::scan_v1;
use fanout_proto::{v2read, Limits};

// -- a tiny protobuf writer for hand-made bodies ------------------------------

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn key(field: u64, wire: u64) -> Vec<u8> {
    varint(field << 3 | wire)
}

fn ld(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = key(field, 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A `TimeSeries.labels` entry with raw name and value bytes.
fn label(name: &[u8], value: &[u8]) -> Vec<u8> {
    ld(1, &cat(&[ld(1, name), ld(2, value)]))
}

fn sample(value: f64, ts: u64) -> Vec<u8> {
    let mut s = key(1, 1);
    s.extend(value.to_le_bytes());
    s.extend(key(2, 0));
    s.extend(varint(ts));
    ld(2, &s)
}

/// A request field holding one series.
fn series(parts: &[Vec<u8>]) -> Vec<u8> {
    ld(1, &cat(parts))
}

fn good_series() -> Vec<u8> {
    series(&[
        label(b"__name__", b"up"),
        label(b"job", b"x"),
        sample(1.0, 1000),
    ])
}

fn v1_error(body: Vec<u8>, limits: &Limits) -> (String, bool) {
    let body = Bytes::from(body);
    let mut out = Vec::new();
    match scan_v1(&body, limits, &mut out) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => (e.to_string(), e.is_limit()),
    }
}

#[test]
fn v1_malformed_inputs() {
    let d = Limits::default();
    let three_labels = [label(b"a", b"1"), label(b"b", b"2"), label(b"c", b"3")];
    let mut twelve_then_bad: Vec<Vec<u8>> = (0..12).map(|_| good_series()).collect();
    twelve_then_bad.push(series(&[three_labels.concat(), vec![0x0a, 0x80]]));

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated varint in a label length",
            cat(&twelve_then_bad),
            "timeseries 12: label 3: truncated varint",
        ),
        (
            "truncated varint in a key",
            cat(&[good_series(), vec![0x80]]),
            "timeseries 1: truncated varint",
        ),
        (
            "varint over 64 bits",
            series(&[label(b"a", b"1"), key(2, 2), vec![0xff; 11]]),
            "timeseries 0: sample 0: varint overflows 64 bits",
        ),
        (
            "labels with the varint wire type",
            series(&[key(1, 0), varint(5)]),
            "timeseries 0: label 0: field 1: wire type 0 (varint), expected 2 (length-delimited)",
        ),
        (
            "series with the 64-bit wire type",
            cat(&[key(1, 1), vec![0; 8]]),
            "timeseries 0: field 1: wire type 1 (64-bit), expected 2 (length-delimited)",
        ),
        (
            "sample value with the varint wire type",
            series(&[label(b"a", b"1"), ld(2, &cat(&[key(1, 0), varint(1)]))]),
            "timeseries 0: sample 0: field 1: wire type 0 (varint), expected 1 (64-bit)",
        ),
        (
            "histogram sum with the varint wire type",
            series(&[label(b"a", b"1"), ld(4, &cat(&[key(3, 0), varint(1)]))]),
            "timeseries 0: histogram 0: field 3: wire type 0 (varint), expected 1 (64-bit)",
        ),
        (
            "label length past the end",
            series(&[vec![0x0a, 50, 0x0a, 0x01, b'a']]),
            "timeseries 0: label 0: length 50 runs past the end of the message (3 bytes left)",
        ),
        (
            "series length past the end",
            vec![0x0a, 0x7f, 0x00],
            "timeseries 0: length 127 runs past the end of the message (1 bytes left)",
        ),
        (
            "truncated sample value",
            series(&[label(b"a", b"1"), ld(2, &cat(&[key(1, 1), vec![0; 3]]))]),
            "timeseries 0: sample 0: truncated 64-bit value",
        ),
        (
            "wire type 3 (group)",
            series(&[label(b"a", b"1"), key(7, 3)]),
            "timeseries 0: invalid wire type 3",
        ),
        (
            "field number 0",
            cat(&[good_series(), vec![0x02, 0x00]]),
            "timeseries 1: invalid field number 0",
        ),
        (
            "label name not UTF-8",
            series(&[label(b"a", b"1"), label(b"b\xff", b"2")]),
            "timeseries 0: label 1: label name is not valid UTF-8",
        ),
        (
            "label value not UTF-8",
            series(&[label(b"a", b"\xc3\x28")]),
            "timeseries 0: label 0: label value is not valid UTF-8",
        ),
        (
            "empty label name",
            series(&[label(b"", b"1")]),
            "timeseries 0: label 0: empty label name",
        ),
        (
            "label without a name field",
            series(&[ld(1, &ld(2, b"v"))]),
            "timeseries 0: label 0: empty label name",
        ),
        (
            "duplicate label name (sorted)",
            series(&[label(b"a", b"1"), label(b"a", b"2")]),
            "timeseries 0: label 1: duplicate label name \"a\"",
        ),
        (
            "duplicate label name (unsorted)",
            series(&[label(b"b", b"1"), label(b"a", b"2"), label(b"b", b"3")]),
            "timeseries 0: label 2: duplicate label name \"b\"",
        ),
        (
            "exemplar with an empty label name",
            series(&[label(b"a", b"1"), ld(3, &label(b"", b"x"))]),
            "timeseries 0: exemplar 0: label 0: empty label name",
        ),
        (
            "metadata help not UTF-8",
            ld(3, &ld(4, b"\xff")),
            "metadata 0: string is not valid UTF-8",
        ),
    ];
    for (name, body, want) in cases {
        let (got, is_limit) = v1_error(body, &d);
        assert_eq!(got, want, "case {name:?}");
        assert!(!is_limit, "case {name:?} is malformed input, not a limit");
    }
}

#[test]
fn v1_limits() {
    let d = Limits::default();
    let many: Vec<Vec<u8>> = (0..65)
        .map(|i| label(format!("l{i:03}").as_bytes(), b"v"))
        .collect();
    let long_name = vec![b'n'; 257];
    let long_value = vec![b'v'; 16 * 1024 + 1];
    let two_series = Limits { max_series: 2, ..d };
    let cases: Vec<(&str, Vec<u8>, Limits, &str)> = vec![
        (
            "labels per series",
            series(&many),
            d,
            "timeseries 0: label 64: 65 labels, more than the limit of 64 (limit max_labels_per_series)",
        ),
        (
            "label name length",
            series(&[label(&long_name, b"v")]),
            d,
            "timeseries 0: label 0: label name of 257 bytes, longer than the limit of 256 (limit max_label_name_length)",
        ),
        (
            "label value length",
            series(&[label(b"a", &long_value)]),
            d,
            "timeseries 0: label 0: label value of 16385 bytes, longer than the limit of 16384 (limit max_label_value_length)",
        ),
        (
            "series per request",
            cat(&[good_series(), good_series(), good_series()]),
            two_series,
            "more than 2 series in one request (limit max_series)",
        ),
    ];
    for (name, body, limits, want) in cases {
        let (got, is_limit) = v1_error(body, &limits);
        assert_eq!(got, want, "case {name:?}");
        assert!(is_limit, "case {name:?} is a limit");
    }
}

// -- 2.0 ----------------------------------------------------------------------

fn symbols(list: &[&[u8]]) -> Vec<u8> {
    list.iter().map(|s| ld(4, s)).collect::<Vec<_>>().concat()
}

fn refs(list: &[u64]) -> Vec<u8> {
    ld(
        1,
        &list.iter().map(|&r| varint(r)).collect::<Vec<_>>().concat(),
    )
}

fn v2_series(parts: &[Vec<u8>]) -> Vec<u8> {
    ld(5, &cat(parts))
}

fn v2_error(body: Vec<u8>) -> String {
    match v2read::to_v1(&body, &Limits::default(), usize::MAX) {
        Ok((_, s)) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn v2_malformed_inputs() {
    let syms = symbols(&[b"", b"__name__", b"up", b"a", b"b"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "odd number of label references",
            cat(&[syms.clone(), v2_series(&[refs(&[1, 2, 3])])]),
            "timeseries 0: odd number of label references (3)",
        ),
        (
            "reference past the symbol table",
            cat(&[syms.clone(), v2_series(&[refs(&[1, 2, 3, 9])])]),
            "timeseries 0: label 1: symbol reference 9 out of range (5 symbols)",
        ),
        (
            "unsorted labels",
            cat(&[syms.clone(), v2_series(&[refs(&[4, 2, 3, 2])])]),
            "timeseries 0: label 1: labels not sorted: \"a\" after \"b\"",
        ),
        (
            "duplicate labels",
            cat(&[syms.clone(), v2_series(&[refs(&[3, 2, 3, 1])])]),
            "timeseries 0: label 1: duplicate label name \"a\"",
        ),
        (
            "empty label name",
            cat(&[syms.clone(), v2_series(&[refs(&[0, 2])])]),
            "timeseries 0: label 0: empty label name",
        ),
        (
            "symbol not UTF-8",
            cat(&[
                symbols(&[b"", b"ok", b"\xff\xfe"]),
                v2_series(&[refs(&[1, 1])]),
            ]),
            "symbol 2: string is not valid UTF-8",
        ),
        (
            "first symbol not empty",
            cat(&[symbols(&[b"__name__", b"up"]), v2_series(&[refs(&[0, 1])])]),
            "symbol 0: the first symbol must be the empty string",
        ),
        (
            "exemplar reference past the symbol table",
            cat(&[
                syms.clone(),
                v2_series(&[refs(&[1, 2]), ld(4, &refs(&[3, 7]))]),
            ]),
            "timeseries 0: exemplar 0: label 0: symbol reference 7 out of range (5 symbols)",
        ),
        (
            "truncated series",
            cat(&[syms.clone(), vec![0x2a, 0x05, 0x0a]]),
            "timeseries 0: length 5 runs past the end of the message (1 bytes left)",
        ),
        (
            "sample timestamp with the 64-bit wire type",
            cat(&[
                syms.clone(),
                v2_series(&[refs(&[1, 2]), ld(2, &cat(&[key(2, 1), vec![0; 8]]))]),
            ]),
            "timeseries 0: sample 0: field 2: wire type 1 (64-bit), expected 0 (varint)",
        ),
        (
            "metadata help reference past the table",
            cat(&[
                syms.clone(),
                v2_series(&[refs(&[1, 2]), ld(5, &cat(&[key(3, 0), varint(40)]))]),
            ]),
            "timeseries 0: metadata 0: symbol reference 40 out of range (5 symbols)",
        ),
    ];
    for (name, body, want) in cases {
        assert_eq!(v2_error(body), want, "case {name:?}");
    }
}

// -- version mismatch ---------------------------------------------------------

/// A body of one version under the other's Content-Type is refused naming
/// the mismatch (it would otherwise parse as an empty request, unknown
/// fields skipped, and be answered 204 with nothing stored).
#[test]
fn a_body_of_the_other_version_is_named() {
    let v2_body = cat(&[
        symbols(&[b"", b"__name__", b"up"]),
        v2_series(&[refs(&[1, 2])]),
    ]);
    assert_eq!(
        v1_error(v2_body, &Limits::default()).0,
        "the Content-Type says remote-write 1.0, but the body holds a remote-write 2.0 message \
         (no 1.0 series; set the Content-Type that matches the body)"
    );
    let v1_body = cat(&[good_series(), good_series()]);
    assert_eq!(
        v2_error(v1_body),
        "the Content-Type says remote-write 2.0, but the body holds a remote-write 1.0 message \
         (no 2.0 series; set the Content-Type that matches the body)"
    );
    // Empty requests stay valid in both.
    let mut out = Vec::new();
    assert_eq!(
        scan_v1(&Bytes::new(), &Limits::default(), &mut out)
            .unwrap()
            .series,
        0
    );
    assert_eq!(
        v2read::to_v1(&[], &Limits::default(), usize::MAX)
            .unwrap()
            .1
            .series,
        0
    );
}

/// A 2.0 body whose series name one long symbol expands as 1.0: its size is
/// measured exactly, and past the limit it is refused as a limit (413) that
/// names it, before any output is made.
#[test]
fn v2_expansion_is_measured_and_bounded() {
    let big = vec![b'x'; 16 << 10];
    let syms = symbols(&[b"", b"__name__", b"m", b"big", &big]);
    let series: Vec<Vec<u8>> = (0..100)
        .map(|_| v2_series(&[refs(&[1, 2, 3, 4])]))
        .collect();
    let body = cat(&[syms, cat(&series)]);
    let d = Limits::default();
    let (v1, summary) = v2read::to_v1(&body, &d, usize::MAX).unwrap();
    assert_eq!(summary.series, 100);
    assert!(v1.len() > 100 * (16 << 10), "{}", v1.len());
    assert_eq!(v2read::v1_len(&body, &d, usize::MAX).unwrap(), v1.len());
    assert_eq!(v2read::to_v1(&body, &d, v1.len()).unwrap().0, v1);
    assert_eq!(v2read::to_v1_measured(&body, &d, v1.len()).unwrap().0, v1);
    let e = v2read::to_v1(&body, &d, v1.len() - 1).unwrap_err();
    assert!(e.is_limit());
    assert!(
        e.to_string().contains(&format!(
            "more than {} bytes as remote-write 1.0",
            v1.len() - 1
        )),
        "{e}"
    );
}
