// Package deploy holds what users deploy beside the collector: the Grafana
// dashboard (grafana/) and Prometheus alert rules (prometheus/) for the
// receiver's gauges. Its tests run the built collector and check that every
// metric the dashboard and the rules query is really exposed.
package deploy
