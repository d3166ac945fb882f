{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "jetsource.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already says it.
     Cut to 43 characters: every object's name is this plus a suffix, and the longest,
     "-snapshotter-metrics" (20), must still fit a Service's 63 (a DNS label). */}}
{{- define "jetsource.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 43 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 43 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 43 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A CronJob's name: at most 52 characters (Kubernetes adds the Job's 11), the
     fullname cut to leave room for the suffix. (dict "root" $ "suffix" "archiver") */}}
{{- define "jetsource.cronJobName" -}}
{{- $suffix := printf "-%s" .suffix }}
{{- include "jetsource.fullname" .root | trunc (int (sub 52 (len $suffix))) | trimSuffix "-" }}{{ $suffix }}
{{- end }}

{{- define "jetsource.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jetsource.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jetsource.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jetsource.labels" -}}
helm.sh/chart: {{ include "jetsource.chart" . }}
{{ include "jetsource.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jetsource
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "publisher"). */}}
{{- define "jetsource.componentLabels" -}}
{{ include "jetsource.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jetsource.componentSelector" -}}
{{ include "jetsource.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jetsource.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "jetsource.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jetsource.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pre-install hooks run before the chart's ServiceAccount exists. */}}
{{- define "jetsource.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}default{{ else }}{{ include "jetsource.serviceAccountName" . }}{{ end }}
{{- end }}

{{- define "jetsource.secretName" -}}
{{- default (include "jetsource.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* A secret setting (a password, token, secret or the ingest's instances; not a _FILE
     path) named in a ConfigMap or a plain env value is refused: it would be readable by
     anyone who may read the ConfigMap or the pod spec. (dict "where" "config.env" "env" map) */}}
{{- define "jetsource.refuseSecretEnv" -}}
{{- range $name, $value := .env }}
{{- if and (regexMatch "(PASSWORD|TOKEN|SECRET|INSTANCES)" (upper $name)) (not (hasSuffix "_FILE" (upper $name))) }}
{{- fail (printf "%s.%s is a secret setting: it would be stored in plain text in a ConfigMap or the pod spec. Give it in secrets (natsPassword, natsToken, valkeyPassword, graphPassword, or secrets.extra.%s), or in secrets.existingSecret under that key" $.where $name (lower $name)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The same for a list of Kubernetes env entries: a secret one must use valueFrom
     (secretKeyRef), never value. (dict "where" "archiver.env" "env" list) */}}
{{- define "jetsource.refuseSecretEnvList" -}}
{{- range .env }}
{{- if and (hasKey . "value") (regexMatch "(PASSWORD|TOKEN|SECRET|INSTANCES)" (upper (.name | default ""))) (not (hasSuffix "_FILE" (upper (.name | default "")))) }}
{{- fail (printf "%s: %s is a secret: give it with valueFrom.secretKeyRef (a Secret you manage), not value, which is stored in plain text in the CronJob" $.where .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings every process reads: the ConfigMap's data, and the hook Job's env. */}}
{{- define "jetsource.configData" -}}
{{- include "jetsource.refuseSecretEnv" (dict "where" "config.env" "env" .Values.config.env) }}
{{- $owned := dict "JETSOURCE_NATS__URL" "nats.url" "JETSOURCE_NATS__USER" "nats.user" "JETSOURCE_VALKEY__URL" "valkey.url" "JETSOURCE_VALKEY__USERNAME" "valkey.username" "JETSOURCE_GRAPH__URI" "graph.uri" "JETSOURCE_GRAPH__USER" "graph.user" "JETSOURCE_GRAPH__DATABASE" "graph.database" "JETSOURCE_EVENTSTORE__REPLICAS" "config.eventstore.replicas" "JETSOURCE_SNAPSHOTS__REPLICAS" "config.snapshots.replicas" "JETSOURCE_SNAPSHOTS__EVERY" "config.snapshots.every" "JETSOURCE_SNAPSHOTS__KEEP" "config.snapshots.keep" "JETSOURCE_LOG_LEVEL" "config.logLevel" }}
{{- range $component, $option := dict "publisher" "PUBLISHER" "query" "QUERY" "observer" "OBSERVER" "processquery" "PROCESS_QUERY" }}
{{- $_ := set $owned (printf "JETSOURCE_%s__GRPC_HOST" $option) (printf "the chart (0.0.0.0: the %s listens on its pod's address)" $component) }}
{{- $_ := set $owned (printf "JETSOURCE_%s__GRPC_PORT" $option) (printf "%s.grpcPort" $component) }}
{{- $_ := set $owned (printf "JETSOURCE_%s__METRICS_PORT" $option) (printf "%s.metricsPort" $component) }}
{{- end }}
{{- range $component, $option := dict "publisher" "PUBLISHER" "query" "QUERY" }}
{{- $_ := set $owned (printf "JETSOURCE_%s__WORKERS" $option) (printf "the chart (1 worker a pod: worker i's /metrics on metricsPort + 100·i would be neither scraped nor let through the NetworkPolicy; scale with %s.replicas)" $component) }}
{{- end }}
{{- range $component := list "projector" "snapshotter" }}
{{- $_ := set $owned (printf "JETSOURCE_%s__HOST" (upper $component)) (printf "the chart (0.0.0.0: the %s listens on its pod's address)" $component) }}
{{- $_ := set $owned (printf "JETSOURCE_%s__HTTP_PORT" (upper $component)) (printf "%s.httpPort" $component) }}
{{- $_ := set $owned (printf "JETSOURCE_%s__PARTITIONS__COUNT" (upper $component)) (printf "%s.partitions" $component) }}
{{- end }}
{{- $_ := set $owned "JETSOURCE_PROJECTOR__MODELS" "projector.models" }}
{{- $_ := set $owned "JETSOURCE_INGEST__HOST" "the chart (0.0.0.0: the ingest listens on its pod's address)" }}
{{- $_ := set $owned "JETSOURCE_INGEST__GRPC_HOST" "the chart (0.0.0.0: the ingest listens on its pod's address)" }}
{{- $_ := set $owned "JETSOURCE_INGEST__HTTP_PORT" "ingest.httpPort" }}
{{- $_ := set $owned "JETSOURCE_INGEST__GRPC_PORT" "ingest.grpcPort" }}
{{- $_ := set $owned "JETSOURCE_INGEST__MAX_BODY_BYTES" "ingest.maxBodyBytes" }}
{{- $_ := set $owned "JETSOURCE_OMNI__RAW_REPLICAS" "config.eventstore.replicas" }}
{{- range $name, $value := .Values.config.env }}
{{- with (index $owned $name) }}
{{- if hasPrefix "the chart" . }}
{{- fail (printf "config.env.%s is set by %s: a value here would be held twice or overridden by the pod's own; leave it out" $name .) }}
{{- end }}
{{- fail (printf "config.env.%s is set by the chart from %s: a value here would be held twice or overridden by the pod's own (doing nothing, or disagreeing with the ports, probes and Services); set %s instead" $name . .) }}
{{- end }}
{{- end }}
JETSOURCE_NATS__URL: {{ .Values.nats.url | quote }}
{{- with .Values.nats.user }}
JETSOURCE_NATS__USER: {{ . | quote }}
{{- end }}
JETSOURCE_VALKEY__URL: {{ .Values.valkey.url | quote }}
{{- with .Values.valkey.username }}
JETSOURCE_VALKEY__USERNAME: {{ . | quote }}
{{- end }}
JETSOURCE_GRAPH__URI: {{ .Values.graph.uri | quote }}
JETSOURCE_GRAPH__USER: {{ .Values.graph.user | quote }}
JETSOURCE_GRAPH__DATABASE: {{ .Values.graph.database | quote }}
JETSOURCE_EVENTSTORE__REPLICAS: {{ .Values.config.eventstore.replicas | quote }}
JETSOURCE_SNAPSHOTS__REPLICAS: {{ .Values.config.snapshots.replicas | quote }}
JETSOURCE_SNAPSHOTS__EVERY: {{ .Values.config.snapshots.every | quote }}
JETSOURCE_SNAPSHOTS__KEEP: {{ .Values.config.snapshots.keep | quote }}
JETSOURCE_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
{{- range $name, $value := .Values.config.env }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The Secret's data: one file per secret setting, only those given. */}}
{{- define "jetsource.secretData" -}}
{{- $s := .Values.secrets }}
{{- with $s.natsPassword }}
jetsource_nats__password: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.natsToken }}
jetsource_nats__token: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.valkeyPassword }}
jetsource_valkey__password: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.graphPassword }}
jetsource_graph__password: {{ . | b64enc | quote }}
{{- end }}
{{- range $name, $value := $s.extra }}
{{ $name }}: {{ $value | toString | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Per-process variables: a list of env entries from a name -> value map. */}}
{{- define "jetsource.envList" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Rolls the pods when the ConfigMap or the chart's own Secret changes. */}}
{{- define "jetsource.checksums" -}}
checksum/config: {{ include "jetsource.configData" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include "jetsource.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{/* Volumes every jetsource pod has: secrets (files) and a writable /tmp.
     (dict "root" $ "secretName" name) */}}
{{- define "jetsource.volumes" -}}
- name: secrets
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
{{- end }}

{{- define "jetsource.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/jetsource
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Pod-level settings shared by every pod of the chart. */}}
{{- define "jetsource.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Replicas of a partitioned worker on different nodes where possible (preferred, so a
small cluster still schedules them); nothing when it runs one replica. */}}
{{- define "jetsource.spreadAffinity" -}}
{{- $v := index .root.Values .component }}
{{- if and (gt (int ($v.partitions | default 0)) 0) (or (gt (int $v.replicas) 1) (and $v.keda $v.keda.enabled)) }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "jetsource.componentSelector" . | nindent 12 }}
{{- end }}
{{- end }}

{{/* The servers' ports the egress policy opens, as a JSON list: networkPolicy.serverPorts
     and the port of each URL of nats.url (a comma-separated list), valkey.url and
     graph.uri, or its scheme's default (a NATS at :4223 was cut off in silence). */}}
{{- define "jetsource.serverPorts" -}}
{{- $defaults := dict "nats" 4222 "tls" 4222 "ws" 80 "wss" 443 "redis" 6379 "rediss" 6379 "valkey" 6379 "valkeys" 6379 "bolt" 7687 "bolt+s" 7687 "bolt+ssc" 7687 "neo4j" 7687 "neo4j+s" 7687 "neo4j+ssc" 7687 }}
{{- $ports := list }}
{{- range .Values.networkPolicy.serverPorts }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- range (concat (splitList "," .Values.nats.url) (list .Values.valkey.url .Values.graph.uri)) }}
{{- $url := trim . }}
{{- $scheme := "" }}
{{- $host := $url }}
{{- if contains "://" $url }}
{{- $scheme = lower (first (splitList "://" $url)) }}
{{- $host = (urlParse $url).host }}
{{- end }}
{{- if regexMatch ":[0-9]+$" $host }}
{{- $port := int (regexFind "[0-9]+$" $host) }}
{{- if and (ge $port 1) (le $port 65535) }}{{ $ports = append $ports $port }}{{ end }}
{{- else if hasKey $defaults $scheme }}
{{- $ports = append $ports (index $defaults $scheme) }}
{{- end }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* The object store's port of an s3:// archive (config.env JETSOURCE_ARCHIVE__URL):
     JETSOURCE_ARCHIVE__ENDPOINT's, else 443; nothing for no s3:// archive. */}}
{{- define "jetsource.archivePort" -}}
{{- $env := .Values.config.env }}
{{- if hasPrefix "s3://" (toString (index $env "JETSOURCE_ARCHIVE__URL" | default "")) }}
{{- $endpoint := toString (index $env "JETSOURCE_ARCHIVE__ENDPOINT" | default "") }}
{{- if $endpoint }}
{{- $host := (urlParse $endpoint).host }}
{{- if regexMatch ":[0-9]+$" $host }}{{ regexFind "[0-9]+$" $host }}{{ else if hasPrefix "http://" $endpoint }}80{{ else }}443{{ end }}
{{- else }}443{{ end }}
{{- end }}
{{- end }}

{{/* The plain-text gRPC health port (config.env JETSOURCE_GRPC__HEALTH_PORT), 0 when
     unset. With gRPC TLS on (JETSOURCE_GRPC__TLS__CERT_FILE) it is required: the
     kubelet's gRPC probes speak plain text only, so against the TLS port they never
     pass and the pods never became ready. */}}
{{- define "jetsource.grpcHealthPort" -}}
{{- $env := .Values.config.env }}
{{- $port := int (index $env "JETSOURCE_GRPC__HEALTH_PORT" | default 0) }}
{{- if and (index $env "JETSOURCE_GRPC__TLS__CERT_FILE") (eq $port 0) }}
{{- fail "config.env.JETSOURCE_GRPC__TLS__CERT_FILE turns TLS on for every gRPC port, and the kubelet's gRPC probes speak plain text only: set config.env.JETSOURCE_GRPC__HEALTH_PORT too (e.g. 50060), a port serving only grpc.health.v1 in plain text, which the probes then ask" }}
{{- end }}
{{- $port }}
{{- end }}

{{/* extraEnv, checked: Kubernetes env entries for every container of the release (the
     AWS_* credentials of an s3:// archive, read by the query service, the projector,
     the admin Job and the archiver alike). A secret only by valueFrom; no JETSOURCE_
     variable (config.env, secrets and the processes' env hold those, checked). */}}
{{- define "jetsource.extraEnv" -}}
{{- include "jetsource.refuseSecretEnvList" (dict "where" "extraEnv" "env" .Values.extraEnv) }}
{{- range .Values.extraEnv }}
{{- if hasPrefix "JETSOURCE_" (upper (.name | default "")) }}
{{- fail (printf "extraEnv: %s is a jetsource setting: give it in config.env (or a process's env, or secrets), where it is checked" .name) }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The port of config.env JETSOURCE_OTEL__ENDPOINT (http://host:port, https://host:port
     or host:port; gRPC's 443 when none is given), nothing when tracing is off. */}}
{{- define "jetsource.otelPort" -}}
{{- $endpoint := toString (index .Values.config.env "JETSOURCE_OTEL__ENDPOINT" | default "") }}
{{- if $endpoint }}
{{- $host := $endpoint }}
{{- if contains "://" $endpoint }}{{ $host = (urlParse $endpoint).host }}{{ end }}
{{- $port := 443 }}
{{- if regexMatch ":[0-9]+$" $host }}{{ $port = int (regexFind "[0-9]+$" $host) }}{{ end }}
{{- if and (ge $port 1) (le $port 65535) }}{{ $port }}{{ end }}
{{- end }}
{{- end }}
