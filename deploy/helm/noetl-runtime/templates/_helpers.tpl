{{/* Names and labels. */}}
{{- define "noetl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "noetl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "noetl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "noetl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "noetl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "noetl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "noetl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "noetl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "noetl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "noetl.secretName" -}}
{{- default (include "noetl.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* The NATS servers: `nats.url`, else the in-cluster NATS chart's service. */}}
{{- define "noetl.natsUrl" -}}
{{- if .Values.nats.url }}
{{- .Values.nats.url }}
{{- else if .Values.nats.enabled }}
{{- $svc := ternary .Release.Name (printf "%s-nats" .Release.Name) (contains "nats" .Release.Name) }}
{{- printf "nats://%s:4222" ($svc | trunc 63 | trimSuffix "-") }}
{{- else }}
{{- fail "nats.url is required when nats.enabled is false (the NATS servers to use)" }}
{{- end }}
{{- end }}

{{/*
Secret-backed variables: (dict "root" $ "secret" NAME "keys" LIST), LIST naming which of
pgDsn, apiToken, encryptionKey the role needs (least privilege: the coordinator gets no
token and no key).
*/}}
{{- define "noetl.secretEnv" -}}
{{- $vars := dict "pgDsn" "NOETL_PG_DSN" "apiToken" "NOETL_API_TOKEN" "encryptionKey" "NOETL_ENCRYPTION_KEY" }}
{{- range .keys }}
- name: {{ get $vars . }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secret }}
      key: {{ get $.root.Values.secret.keys . }}
      {{- if eq . "apiToken" }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/*
A pod template of one role: (dict "root" $ "component" NAME "args" LIST "env" LIST
"secrets" LIST "resources" MAP "ports" LIST "probes" MAP "scheduling" MAP).
*/}}
{{- define "noetl.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "noetl.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "noetl.serviceAccountName" $root }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "noetl.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["noetl-runtime"]
      args:
        {{- toYaml .args | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "noetl.fullname" $root }}
      env:
        {{- include "noetl.secretEnv" (dict "root" $root "secret" (include "noetl.secretName" $root) "keys" .secrets) | nindent 8 }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .ports }}
      ports:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .probes }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
  {{- with .scheduling.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .scheduling.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .scheduling.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* `{NAME: value}` as a container's env list. */}}
{{- define "noetl.envList" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
