{{/*
One Deployment of a jetsource process. Called with a dict:
  root       the chart's root context ($)
  component  publisher | query | observer | processquery | projector | snapshotter
  command    the console script (deploy/Dockerfile, pyproject [project.scripts])
  env        process-specific variables (name -> value), before the component's own env
  ports      list of (dict "name" "containerPort")
  probes     YAML of startupProbe/readinessProbe/livenessProbe
  grpc       true for a gRPC service: it serves the plain-text health port, when set
  recreate   true for single-consumer workers: never two at once
  hpa        true when an HPA (or KEDA) owns the replica count
  affinity   YAML of a default affinity, used when the values set none
*/}}
{{- define "jetsource.deployment" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- include "jetsource.refuseSecretEnv" (dict "where" (printf "%s.env" .component) "env" $v.env) }}
{{- range $name, $value := $v.env }}
{{- if and (hasKey $.env $name) (hasSuffix "__WORKERS" $name) }}
{{- fail (printf "%s.env.%s is set by the chart to 1 worker a pod: worker i's /metrics on metricsPort + 100·i would be neither scraped nor let through the NetworkPolicy; scale with %s.replicas instead" $.component $name $.component) }}
{{- end }}
{{- if hasKey $.env $name }}
{{- fail (printf "%s.env.%s is set by the chart from %s's own values (its ports, probes and Service follow them): set it there (values.yaml, %s), not in env" $.component $name $.component $.component) }}
{{- end }}
{{- end }}
{{- $ctx := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "jetsource.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "jetsource.componentLabels" $ctx | nindent 4 }}
spec:
  {{- if not .hpa }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if .recreate }}
  strategy:
    type: Recreate
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  {{- end }}
  selector:
    matchLabels:
      {{- include "jetsource.componentSelector" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "jetsource.componentLabels" $ctx | nindent 8 }}
      annotations:
        {{- include "jetsource.checksums" $root | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "jetsource.serviceAccountName" $root }}
      {{- include "jetsource.podCommon" $root | nindent 6 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "jetsource.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ .command | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "jetsource.fullname" $root }}
          env:
            {{- include "jetsource.envList" (merge (dict) $v.env .env) | trim | nindent 12 }}
            {{- with (include "jetsource.extraEnv" $root) }}
            {{- . | nindent 12 }}
            {{- end }}
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .containerPort }}
              protocol: TCP
            {{- end }}
            {{- $health := int (include "jetsource.grpcHealthPort" $root) }}
            {{- if and .grpc $health }}
            - name: health
              containerPort: {{ $health }}
              protocol: TCP
            {{- end }}
          {{- .probes | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "jetsource.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "jetsource.volumes" (dict "root" $root "secretName" (include "jetsource.secretName" $root)) | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with ($v.affinity | default (.affinity | default "" | fromYaml)) }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* Probes of a gRPC service: grpc.health.v1 on its port (kubelet's native gRPC probe),
     or on the plain-text health port when config.env sets one (gRPC TLS on).
     (dict "root" $ "port" grpcPort) */}}
{{- define "jetsource.grpcProbes" -}}
{{- $port := int (include "jetsource.grpcHealthPort" .root) | default .port }}
startupProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 2
  failureThreshold: 60
readinessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
livenessProbe:
  # "liveness" is SERVING while the process answers: a replica that cannot write (NATS
  # away) is taken out by readiness, not restarted (restarting does not bring NATS back).
  grpc:
    port: {{ $port }}
    service: liveness
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
{{- end }}

{{/* Probes of a worker: /healthz is 200 while every consumer runs and NATS is connected
     (readiness); /livez is 503 only for what a restart cures (a stalled event loop, a
     model stalled with NATS and its store answering), so an outage of a dependency takes
     the pod out of service without restarting it in a loop. */}}
{{- define "jetsource.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  failureThreshold: 90
readinessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
livenessProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 8
{{- end }}
