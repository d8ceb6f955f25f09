#!/usr/bin/env python3
"""Lists relay-core's public API, one item per line, from rustdoc's JSON.

Usage: scripts/public-api.py RUSTDOC_JSON > relay-core/public-api.txt

Walks what an embedder can name from the crate root: public modules and
their items (re-exports under the path they are re-exported at), struct
fields, enum variants, trait items, inherent methods and constants, and the
traits each public type implements (auto traits and blanket impls left out).
Items under `#[doc(hidden)]` are not part of the promise and are left out.
"""
import json
import sys


def main(path):
    d = json.load(open(path))
    index = d["index"]
    root = d["root"]
    out = set()
    seen_types = set()

    def item(i):
        return index.get(str(i)) or index.get(i)

    def kind_of(it):
        return next(iter(it["inner"])) if isinstance(it["inner"], dict) else it["inner"]

    def public(it):
        return it.get("visibility") == "public" and not hidden(it)

    def hidden(it):
        attrs = it.get("attrs") or []
        return any("doc(hidden)" in (a if isinstance(a, str) else json.dumps(a)) for a in attrs)

    def type_name(t):
        if not isinstance(t, dict):
            return str(t)
        if "resolved_path" in t:
            return t["resolved_path"].get("path") or t["resolved_path"].get("name", "?")
        if "primitive" in t:
            return t["primitive"]
        if "generic" in t:
            return t["generic"]
        if "borrowed_ref" in t:
            return "&" + type_name(t["borrowed_ref"]["type"])
        return next(iter(t))

    def walk_impls(prefix, impls):
        for impl_id in impls:
            imp = item(impl_id)
            if imp is None:
                continue
            inner = imp["inner"]["impl"]
            if inner.get("is_synthetic") or inner.get("blanket_impl"):
                continue
            trait = inner.get("trait")
            if trait:
                out.add(f"{prefix}: impl {trait.get('path') or trait.get('name')}")
                continue
            for m in inner["items"]:
                mi = item(m)
                if mi is not None and public(mi):
                    out.add(f"{prefix}::{mi['name']} ({kind_of(mi)})")

    def walk(prefix, it, name):
        kind = kind_of(it)
        path = f"{prefix}::{name}" if prefix else name
        if kind == "module":
            out.add(f"{path} (module)")
            for child in it["inner"]["module"]["items"]:
                ci = item(child)
                if ci is None:
                    continue
                if kind_of(ci) == "use":
                    use = ci["inner"]["use"]
                    if not public(ci) or use.get("is_glob"):
                        continue
                    target = item(use.get("id")) if use.get("id") is not None else None
                    if target is None:
                        out.add(f"{path}::{use['name']} (re-export of {use['source']})")
                    else:
                        walk(path, target, use["name"])
                elif public(ci):
                    walk(path, ci, ci["name"])
            return
        out.add(f"{path} ({kind})")
        if path in seen_types:
            return
        seen_types.add(path)
        inner = it["inner"][kind] if isinstance(it["inner"], dict) else {}
        if kind == "struct":
            k = inner.get("kind", {})
            fields = k.get("plain", {}).get("fields", []) if isinstance(k, dict) else []
            for f in fields:
                fi = item(f)
                if fi is not None and public(fi):
                    out.add(f"{path}.{fi['name']} (field)")
            walk_impls(path, inner.get("impls", []))
        elif kind == "enum":
            for v in inner.get("variants", []):
                vi = item(v)
                if vi is not None:
                    out.add(f"{path}::{vi['name']} (variant)")
            walk_impls(path, inner.get("impls", []))
        elif kind == "union":
            walk_impls(path, inner.get("impls", []))
        elif kind == "trait":
            for t in inner.get("items", []):
                ti = item(t)
                if ti is not None:
                    out.add(f"{path}::{ti['name']} ({kind_of(ti)})")

    r = item(root)
    walk("", r, r["name"])
    for line in sorted(out):
        print(line)


if __name__ == "__main__":
    main(sys.argv[1])
