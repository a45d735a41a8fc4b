{{/* The chart's name, or nameOverride. */}}
{{- define "clusterpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, at most 63 characters (fullnameOverride wins). */}}
{{- define "clusterpool.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "clusterpool.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "clusterpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object: the selector's, the version, and commonLabels. */}}
{{- define "clusterpool.labels" -}}
{{ include "clusterpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "clusterpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clusterpool.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set, else repository:tag (tag
defaults to the chart's appVersion). Called with (dict "image" .Values.image "root" .). */}}
{{- define "clusterpool.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when every watched namespace is a plain name (no kopf glob or negation): then
the chart grants per-namespace Roles; empty otherwise (a ClusterRole). Called with a list. */}}
{{- define "clusterpool.byName" -}}
{{- $plain := gt (len .) 0 -}}
{{- range . -}}
{{- if regexMatch "[*?\\[!,]" . -}}{{- $plain = false -}}{{- end -}}
{{- end -}}
{{- if $plain -}}true{{- end -}}
{{- end -}}

{{/* A pod's topologySpreadConstraints: a constraint without a labelSelector selects the
pods of its own Deployment. Called with (dict "constraints" list "selector" labels-dict). */}}
{{- define "clusterpool.topologySpread" -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $.selector) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The gateway's full name and selector labels. */}}
{{- define "clusterpool.gateway.fullname" -}}
{{- printf "%s-gateway" (include "clusterpool.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{/* Not the operator's selector plus a label: the operator's Deployment, PDB and metrics
Service select by name and instance, so the gateway's pods carry a name of their own. */}}
{{- define "clusterpool.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterpool.name" . }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "clusterpool.gateway.labels" -}}
{{ include "clusterpool.gateway.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "clusterpool.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "clusterpool.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "clusterpool.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the gateway serves: gateway.namespaces, else watchNamespaces. */}}
{{- define "clusterpool.gateway.namespaces" -}}
{{- toJson (default .Values.watchNamespaces .Values.gateway.namespaces) -}}
{{- end -}}

{{/* An HTTP probe from values: httpGet on path/port plus the timing settings given. */}}
{{- define "clusterpool.probe" -}}
httpGet: {path: {{ .path }}, port: {{ .port }}}
{{- range $k, $v := omit .settings "enabled" }}
{{ $k }}: {{ $v }}
{{- end }}
{{- end -}}

{{/* The operator's rules on namespaced resources: in its ClusterRole, or in a Role per
watched namespace (the same rules as manifests/install/10-rbac.yaml). */}}
{{- define "clusterpool.operatorNamespacedRules" -}}
# Watch pools; kopf patches its finalizer and bookkeeping annotations.
- apiGroups: [clusterpool.dev]
  resources: [clusterpools]
  verbs: [get, list, watch, patch]
# Each pool's daemon writes its status.
- apiGroups: [clusterpool.dev]
  resources: [clusterpools/status]
  verbs: [get, patch]
# Kubernetes discovery watches EndpointSlices; what a pool publishes: a Service, EndpointSlices
# of eligible endpoints, the routing ConfigMap (list: metadata of the pools' own, by label).
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, create, patch, delete]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch, create, patch, delete]
# Credentials a pool names (e.g. spec.discovery.consul.tokenSecretRef): one by name; never list.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on every endpoint and pool transition.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* A ServiceMonitor endpoint's interval, scrapeTimeout and relabelings from values. */}}
{{- define "clusterpool.scrapeSettings" -}}
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
