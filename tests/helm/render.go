// helm-render: renders a Helm chart's templates the way `helm template` does, for the tests, where helm
// itself cannot be installed (it is in none of the registries this project installs from, and Debian's Go
// cannot build it offline).  It uses what Helm's own engine is made of: Go's text/template with the sprig
// function library (Debian's golang-github-masterminds-sprig-dev), plus Helm's own `include`, `tpl`,
// `required`, `toYaml` and `fromYaml`; `.Chart` from Chart.yaml, `.Values` from values.yaml merged with
// each -f file, `.Release` (Name, Namespace, Service "Helm"), missing keys rendering as "" as Helm does.
// Not covered: lookup, .Capabilities, subcharts, hooks, --set.
//
//	helm-render [-f values.yaml]... [-name release] [-namespace ns] CHART_DIR
//
// Output: every non-partial template, each after "---\n# Source: CHART/templates/FILE".
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// merge: b's values over a's, maps merged key by key (Helm's coalescing of values files).
func merge(a, b map[string]interface{}) map[string]interface{} {
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if am, ok := a[k].(map[string]interface{}); ok {
				a[k] = merge(am, vm)
				continue
			}
		}
		a[k] = v
	}
	return a
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	var valueFiles files
	flag.Var(&valueFiles, "f", "a values file merged over the chart's values.yaml (repeatable)")
	name := flag.String("name", "release-name", "the release name")
	namespace := flag.String("namespace", "default", "the release namespace")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-render [-f values.yaml]... [-name NAME] [-namespace NS] CHART_DIR")
		os.Exit(2)
	}
	if err := render(flag.Arg(0), valueFiles, *name, *namespace); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func render(dir string, valueFiles []string, name, namespace string) error {
	chartFile, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chart := map[string]interface{}{}
	for k, v := range chartFile { // Helm exposes Chart.yaml's fields capitalised: .Chart.Name, .Chart.AppVersion
		chart[strings.ToUpper(k[:1])+k[1:]] = v
	}
	values, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		more, err := readYAML(f)
		if err != nil {
			return err
		}
		values = merge(values, more)
	}
	top := map[string]interface{}{
		"Chart":   chart,
		"Values":  values,
		"Release": map[string]interface{}{"Name": name, "Namespace": namespace, "Service": "Helm", "IsInstall": true},
	}
	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["include"] = func(n string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, n, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		if t, err = t.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &out); err != nil {
			out["Error"] = err.Error()
		}
		return out
	}
	root.Funcs(funcs)
	paths, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(paths)
	var rendered []string
	for _, p := range paths {
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		base := filepath.Base(p)
		if _, err := root.New(base).Parse(string(text)); err != nil {
			return err
		}
		if !strings.HasPrefix(base, "_") && (strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml")) {
			rendered = append(rendered, base)
		}
	}
	chartName, _ := chart["Name"].(string)
	for _, base := range rendered {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, base, top); err != nil {
			return err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(out) == "" {
			continue // a template whose condition is off renders nothing, as in helm
		}
		fmt.Printf("---\n# Source: %s/templates/%s\n%s\n", chartName, base, strings.TrimSpace(out))
	}
	return nil
}
