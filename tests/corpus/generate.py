#!/usr/bin/env python3
"""Writes the hostile-input corpus (tests/corpus/*.jsonl) that tests/tests/security_inputs.rs
replays against the real daemon. The .jsonl files are checked in; this script is their source
(run it after editing, and commit both). One JSON object a line:

  name            what the case tries
  paths           ["mount", "csi"]: the provider API Mount, the CSI NodePublishVolume, or both
  attributes_raw  the MountRequest.attributes string as is (mount only)
  secrets_raw     the MountRequest.secrets string as is (mount only)
  permission      MountRequest.permission (mount only)
  set             attributes / volume_context overrides on a valid request (null removes a key)
  secrets_set     nodePublishSecretRef overrides (null removes)
  object          one object's YAML, wrapped as the only element of `objects`
  objects         the whole `objects` attribute
  csi             CSI request shape: volume_id, target (a name below), readonly, capability,
                  mount_group
  op              "publish" (default) or "unpublish" (csi only)
  expect          "InvalidArgument" (default; refused before any Key Vault request), "NotFound"
                  (parsed, then not in the vault), or "ok": a harmless input that must be
                  accepted and must land inside the target
  field           text the error message must contain (the field it names)
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BOTH = ["mount", "csi"]
MOUNT = ["mount"]
CSI = ["csi"]
cases = []


def R(text, n):
    """`text` repeated `n` times, stored compactly as @@n*text@@ (expanded by the test)."""
    assert "@" not in text
    return "@@%d*%s@@" % (n, text)


def case(name, field, paths=BOTH, **kw):
    c = {"name": name, "paths": paths, "field": field}
    c.update(kw)
    cases.append(c)


def obj(body):
    return body


# --- attributes JSON as a whole (the driver's MountRequest.attributes string) ---------------
for name, raw in [
    ("array", "[]"),
    ("number", "42"),
    ("string", '"keyvaultName"'),
    ("unclosed object", "{"),
    ("trailing comma", '{"keyvaultName":"demo",}'),
    ("single quotes", "{'keyvaultName':'demo'}"),
    ("number value", '{"keyvaultName":5}'),
    ("null value", '{"keyvaultName":null}'),
    ("bool value", '{"keyvaultName":true}'),
    ("array value", '{"keyvaultName":["demo"]}'),
    ("object value", '{"keyvaultName":{"a":"b"}}'),
    ("deep nesting 10000", R("[", 10000) + R("]", 10000)),
    ("deep object nesting 5000", R('{"a":', 5000) + "1" + R("}", 5000)),
    ("lone surrogate escape", '{"keyvaultName":"\\ud800"}'),
    ("bad escape", '{"keyvaultName":"\\q"}'),
    ("raw control char", '{"keyvaultName":"de\u0001mo"}'),
    ("two documents", '{"a":"b"}{"c":"d"}'),
    ("garbage after object", '{"a":"b"} x'),
    ("NaN", '{"a":NaN}'),
    ("comment", '{/*x*/"a":"b"}'),
    ("huge key 900 KiB unclosed", '{"' + R("k", 900 << 10)),
    ("BOM prefix", "\ufeff{}"),
]:
    case("attributes: " + name, "attributes", MOUNT, attributes_raw=raw)

# Duplicate keys: the last one wins; a valid first value cannot smuggle a bad last one past.
case("attributes: duplicate keyvaultName, last bad", "keyvaultName", MOUNT,
     attributes_raw='{"keyvaultName":"demo","keyvaultName":"../etc"}')
case("attributes: empty object", "keyvaultName", MOUNT, attributes_raw="{}")
# JSON null is the empty map: the driver marshals a nil Go map that way.
case("attributes: null", "keyvaultName", MOUNT, attributes_raw="null")
# An empty attributes string is an empty map (what the driver sends for no attributes).
case("attributes: empty string", "keyvaultName", MOUNT, attributes_raw="")
case("attributes: whitespace", "keyvaultName", MOUNT, attributes_raw="   \n")

# --- secrets JSON (nodePublishSecretRef data) ------------------------------------------------
for name, raw in [
    ("unclosed", "[1,2"),
    ("array", "[]"),
    ("number value", '{"clientid":1}'),
    ("null value", '{"clientsecret":null}'),
    ("nested", '{"clientsecret":{"v":"x"}}'),
    ("deep nesting", R("[", 5000)),
    ("not JSON", "clientsecret=x"),
]:
    case("secrets: " + name, "secrets", MOUNT, secrets_raw=raw)
case("secrets: clientid without clientsecret", "secrets.clientsecret", MOUNT,
     secrets_raw='{"clientid":"00000000-0000-0000-0000-00000000000a"}')
case("secrets: clientsecret without clientid", "secrets.clientid", MOUNT,
     secrets_raw='{"clientsecret":"CANARY-SP-SECRET-7f3a9c"}')
case("secrets: both empty", "clientID", MOUNT, secrets_raw='{"clientid":"","clientsecret":""}')
# JSON null is what the driver sends without a nodePublishSecretRef: no credential at all.
case("secrets: null", "clientID", MOUNT, secrets_raw="null")

# --- permission (MountRequest.permission) ----------------------------------------------------
for raw in ["abc", "-1", "512", "4095", "4294967296", "99999999999999999999", "0x1a4", "1e3",
            "420.5", "[420]", "{}", "true", "\u0000", "4\u00002\u00000", "٤٢٠"]:
    case("permission: %r" % raw, "permission", MOUNT, permission=raw)
# Quotes around the number are stripped, however many: harmless.
case("permission: doubly quoted 420 accepted", "", MOUNT, permission='""420""', expect="ok", file="db-password")

# --- attributes, one at a time --------------------------------------------------------------
for value in ["x", "ab", "a" * 25, "../demo", "demo/../other", "demo.evil.example", "demo\u0000",
              "dem o", "ＤＥＭＯ", "demo\nx", "-" * 3 + "\u202e", "%2e%2e", R("a", 100000)]:
    case("keyvaultName %r" % value[:40], "keyvaultName", set={"keyvaultName": value})
case("keyvaultName missing", "keyvaultName", set={"keyvaultName": None})
case("keyvaultName blank", "keyvaultName", set={"keyvaultName": "   "})
for value in ["../../", "tenant with space", "t" * 300, "https://evil.example/x", "x\u0000y",
              "a/b", "?x=1", "#frag", "tenant\r\nHost: evil"]:
    case("tenantID %r" % value[:40], "tenantID", set={"tenantID": value})
case("tenantID missing", "tenantID", set={"tenantID": None})
for key, value in [("usePodIdentity", "true"), ("usePodIdentity", "maybe"),
                   ("usePodIdentity", "TRUE!"), ("useVMManagedIdentity", "true"),
                   ("useVMManagedIdentity", "2"), ("cloudName", "AzureGermanCloud"),
                   ("cloudName", "../AzurePublicCloud"), ("cloudName", R("x", 5000)),
                   ("cloudEnvFileName", "relative/env.json"), ("cloudEnvFileName", "/nonexistent/env.json"),
                   ("cloudEnvFileName", "/" + R("x", 5000)), ("cloudEnvFileName", "/proc/self/environ")]:
    case("%s=%r" % (key, value[:40]), key, set={key: value})
case("objects missing", "objects", set={"objects": None})
case("objects blank", "objects", set={"objects": " "})
case("clientID and service principal both", "clientID",
     set={"clientID": "00000000-0000-0000-0000-00000000000a"})
case("no identity at all", "clientID", secrets_set={"clientid": None, "clientsecret": None})

# Workload identity: the kubelet token attribute.
TOK = "csi.storage.k8s.io/serviceAccount.tokens"
wi = {"clientID": "00000000-0000-0000-0000-00000000000a"}
nosp = {"clientid": None, "clientsecret": None}
for name, raw in [
    ("missing", None), ("empty", ""), ("not JSON", "{"), ("array", "[]"), ("string", '"tok"'),
    ("audience without token", '{"api://AzureADTokenExchange":{}}'),
    ("empty token", '{"api://AzureADTokenExchange":{"token":""}}'),
    ("token number", '{"api://AzureADTokenExchange":{"token":5}}'),
    ("other audience only", '{"api://other":{"token":"CANARY-SA-TOKEN-51d2e0"}}'),
    ("deep nesting", R("{\"a\":", 3000)),
]:
    s = dict(wi)
    s[TOK] = raw
    case("workload identity, tokens %s" % name, TOK, set=s, secrets_set=nosp)

# --- objects YAML as a whole -----------------------------------------------------------------
bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    "%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n" % ((chr(98 + i), chr(98 + i)) + (chr(97 + i),) * 9)
    for i in range(8)) + "array: [*i]\n"
for name, raw in [
    ("not YAML", "array: [unclosed"), ("no array key", "items: []"), ("array empty", "array: []"),
    ("array null", "array:"), ("array a map", "array: {a: b}"), ("array a number", "array: 5"),
    ("array of numbers", "array: [5]"), ("array of maps", "array:\n  - {objectName: a}"),
    ("array of lists", "array: [[a]]"), ("top-level list", "- objectName: a"), ("null", "~"),
    ("only a comment", "# nothing"), ("tab indentation", "array:\n\t- |\n\t\tobjectName: a"),
    ("deep flow nesting", "array: " + R("[", 10000)), ("deep block nesting",
     "".join("  " * i + "a:\n" for i in range(120))), ("anchor bomb", bomb),
    ("duplicate array keys", "array: []\narray: []"), ("python tag", "!!python/object:os.system [ls]"),
    ("binary tag", "array: !!binary aGVsbG8="), ("multi documents", "array: []\n---\narray: []"),
    ("unknown top key", "array: []\nextra: 1"), ("huge string 900 KiB", "array: [\"" + R("x", 900 << 10)),
    ("merge key alias", "base: &b {array: []}\n<<: *b"), ("undefined alias", "array: *nope"),
    ("BOM and garbage", "\ufeff: : :"), ("NUL byte", "array:\u0000[]"),
    ("10000 empty objects", "array:\n" + R("  - ''\n", 10000)),
]:
    case("objects: " + name, "objects", objects=raw)

# The caps on a class: objects, files (objects x history), and an alias's depth.
def many(n, extra=""):
    return "array:\n" + "".join("  - |\n    objectName: s%d\n    objectType: secret\n%s" % (i, extra) for i in range(n))
case("objects: 101 objects", "objects", objects=many(101))
case("objects: 201 files", "objects", objects=many(67, "    objectVersionHistory: 3\n"))

# --- one object's YAML -----------------------------------------------------------------------
def o(name="db-password", extra=""):
    return "objectName: %s\nobjectType: secret\n%s" % (name, extra)

for name in ["../etc/passwd", "/etc/passwd", "a/b", "..data", ".", "..", "a\\b", "a_b", "a.b",
             "a b", "'%s'" % ("n" * 128), "'%s'" % R("n", 200000), "'ａ'", "'a\u200bb'",
             "'\u202ecod.exe'", "\"a\\nb\"", "'*'", "'%2e%2e'", "~", "''", "'  '"]:
    field = "objects[0].objectName"
    case("objectName %r" % name[:40], field, object=o(name))
case("objectName with NUL", "objects", object=o("'a\u0000b'"))
case("objectName missing", "objects[0].objectName", object="objectType: secret\n")
for name in ["[a]", "{a: b}"]:
    case("objectName %s (wrong type)" % name, "objects[0]", object=o(name))
# YAML scalars become strings: a number or bool is a valid Key Vault name.
# (not in the vault: NOT_FOUND from Key Vault, not a parse error)
case("objectName number is a name", "secret/123", object="objectName: 123\nobjectType: secret\n", expect="NotFound")
case("objectName bool is a name", "secret/true", object="objectName: true\nobjectType: secret\n", expect="NotFound")

for alias in ["../x", "a/../../x", "/etc/passwd", "..data", "..data/x", "..2026_01_01_00_00_00.1",
              "..", ".", "./a", "a/./b", "a//b", "a/", "a/..", "a/../b", "a\\..\\b", "\\etc",
              "\"a\\u0001b\"", "\"a\\tb\"", "\"a\\rb\"", "\"a\\u007fb\"",
              "'%s'" % ("e" * 256), "'%s'" % (R("d/", 2100) + "f"), "'../%s'" % R("x", 100000),
              "'.../../x'", "'/'", "'//'", "'/proc/self/root/etc'",
              "'..\u2024/x'"]:
    case("objectAlias %r" % alias[:40], "objects[0].objectAlias", object=o(extra="objectAlias: %s\n" % alias))
for alias in ["[a]", "{a: b}"]:
    case("objectAlias %s (wrong type)" % alias, "objects[0]", object=o(extra="objectAlias: %s\n" % alias))
for field in ["objectAlias", "objectVersion", "filePermission"]:
    case("%s with NUL" % field, "objects", object=o(extra="%s: \"a\\0b\"\n" % field))
case("objectAlias 17 levels", "objects[0].objectAlias", object=o(extra="objectAlias: %s\n" % "/".join(["d"] * 17)))
case("objectAlias number accepted", "", object=o(extra="objectAlias: 5\n"), expect="ok", file="5")
# Unicode whitespace (U+2028) around a value is trimmed like ASCII whitespace.
case("objectAlias U+2028 trimmed", "", object=o(extra="objectAlias: \"\\u2028x\"\n"), expect="ok", file="x")
case("filePermission empty accepted", "", object=o(extra="filePermission: \"\"\n"), expect="ok", file="db-password")

for perm in ["\"0999\"", "\"4755\"", "\"2755\"", "\"1777\"", "\"7777\"", "rw", "\"-1\"",
             "\"01000\"", "\"0x1ff\"", "\"0o1000\"", "\"077777\"", "'0644 0644'", "true", "[0644]",
             "{a: b}", "\"٠٦٤٤\""]:
    case("filePermission %r" % perm, "objects[0].filePermission", object=o(extra="filePermission: %s\n" % perm))

for enc in ["utf-16", "rot13", "BASE64X", "'../hex'", "[base64]"]:
    f = "objects[0].objectEncoding" if not enc.startswith("[") else "objects[0]"
    case("objectEncoding %r" % enc, f, object=o(extra="objectEncoding: %s\n" % enc))
for typ in ["blob", "''", "secret/../key", "[secret]", "5", "SECRETS"]:
    f = "objects[0].objectType" if not typ.startswith("[") else "objects[0]"
    case("objectType %r" % typ, f, object="objectName: a\nobjectType: %s\n" % typ)
case("objectType missing", "objects[0].objectType", object="objectName: a\n")
for ver in ["../x", "v" * 100, "latest/../x", "'v1 v2'", "'%2F'", "'\u202e1'"]:
    case("objectVersion %r" % ver[:40], "objects[0].objectVersion", object=o(extra="objectVersion: %s\n" % ver))
for hist in ["51", "-1", "abc", "1.5", "[1]", "'%s'" % R("9", 5000)]:
    case("objectVersionHistory %r" % hist, "objects[0].objectVersionHistory", object=o(extra="objectVersionHistory: %s\n" % hist))
case("objectVersionHistory 2^66", "objects[0]", object=o(extra="objectVersionHistory: 99999999999999999999\n"))
case("objectFormat bogus", "objects[0].objectFormat", object=o(extra="objectFormat: der\n"))
case("unknown key (typo)", "objects[0]", object=o(extra="objectAliass: b\n"))
case("unknown key (path)", "objects[0]", object=o(extra="path: /etc/x\n"))
case("duplicate objectName key", "objects[0]", object="objectName: a\nobjectName: b\nobjectType: secret\n")
case("duplicate objectAlias key", "objects[0]", object=o(extra="objectAlias: a\nobjectAlias: ../b\n"))
case("object is a list", "objects[0]", object="- a\n- b\n")
case("object is a scalar", "objects[0]", object="just text\n")
case("object YAML anchor bomb", "objects[0]", object=bomb)
case("object deep nesting", "objects[0]", object="objectName: " + R("[", 5000))

# Two objects that write the same file, or a file inside another's file.
def two(a, b):
    return "array:\n  - |\n" + "".join("    " + l + "\n" for l in a.splitlines()) + \
        "  - |\n" + "".join("    " + l + "\n" for l in b.splitlines())
case("same file twice", "objects[1]", objects=two(o(), o()))
case("same alias twice", "objects[1]", objects=two(o("db-password", "objectAlias: x\n"), o("api-key", "objectAlias: x\n")))
case("file inside another's file", "objects[1]", objects=two(o("db-password", "objectAlias: a\n"), o("api-key", "objectAlias: a/b\n")))
case("second object bad", "objects[1].objectAlias", objects=two(o(), o("api-key", "objectAlias: ../x\n")))

# --- CSI request shape -----------------------------------------------------------------------
case("csi: empty volume_id", "volume_id", CSI, csi={"volume_id": ""})
for t in ["empty", "relative", "dotdot", "root", "dotdot-middle", "dot-relative"]:
    case("csi: target %s" % t, "target_path", CSI, csi={"target": t})
case("csi: readonly false", "readonly", CSI, csi={"readonly": False})
case("csi: no capability", "volume_capability", CSI, csi={"capability": "none"})
case("csi: block capability", "volume_capability", CSI, csi={"capability": "block"})
for g in ["abc", "-5", "4294967296", "1.5", "0x10", "１"]:
    case("csi: volume_mount_group %r" % g, "volume_mount_group", CSI, csi={"mount_group": g})
    case("csi: fsGroup %r" % g, "fsGroup", CSI, set={"fsGroup": g})
case("csi: class without namespace", "pod.namespace", CSI,
     set={"secretProviderClass": "app", "csi.storage.k8s.io/pod.namespace": None})
case("csi: unpublish empty volume_id", "volume_id", CSI, op="unpublish", csi={"volume_id": ""})
for t in ["empty", "relative", "dotdot"]:
    case("csi: unpublish target %s" % t, "target_path", CSI, op="unpublish", csi={"target": t})

# --- harmless inputs that look odd: accepted, and the file lands inside the target ------------
for alias in ["...", "..a", ".hidden", "a..b", "\u2025", "．．/x", "a\u200bb", "\u202etxt.exe",
              "dir/sub/file", "con", "a:b", "~root"]:
    # a leading ".." is refused (it could shadow ..data); the others are plain names on Linux
    if alias.startswith(".."):
        case("objectAlias %r (leading ..)" % alias, "objects[0].objectAlias", object=o(extra="objectAlias: '%s'\n" % alias))
    else:
        case("objectAlias %r accepted" % alias, "", object=o(extra="objectAlias: '%s'\n" % alias), expect="ok", file=alias)

with open(os.path.join(HERE, "inputs.jsonl"), "w", encoding="utf-8") as out:
    for c in cases:
        out.write(json.dumps(c, ensure_ascii=True) + "\n")
print("%d cases, %d runs" % (len(cases), sum(len(c["paths"]) for c in cases)))
