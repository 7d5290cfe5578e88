{{/*
Names, labels and the addresses the services use to reach each other. Every address is
made here once, so the storage nodes advertise exactly the address the join Job
registers them with.
*/}}

{{- define "dynamo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name. Kept short: a storage pod's name (the node id)
is `<fullname>-storage[-<zone>]-<ordinal>` and must stay within 63 characters. */}}
{{- define "dynamo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dynamo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: call with (dict "ctx" $ "component" "storage"). */}}
{{- define "dynamo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamo.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects. */}}
{{- define "dynamo.labels" -}}
{{ include "dynamo.selectorLabels" . }}
helm.sh/chart: {{ include "dynamo.chart" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: dynamo
{{- end -}}

{{- define "dynamo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dynamo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dynamo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dynamo.scheme" -}}
{{- if .Values.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "dynamo.probeScheme" -}}
{{- if .Values.tls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{- define "dynamo.ringService" -}}
{{- printf "%s-ring" (include "dynamo.fullname" .) -}}
{{- end -}}

{{- define "dynamo.storageService" -}}
{{- printf "%s-storage" (include "dynamo.fullname" .) -}}
{{- end -}}

{{- define "dynamo.coordinatorService" -}}
{{- printf "%s-coordinator" (include "dynamo.fullname" .) -}}
{{- end -}}

{{/* `<service>.<namespace>.svc.<domain>`: call with (list $ "service-name"). */}}
{{- define "dynamo.serviceHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s.%s.svc.%s" (index . 1) $ctx.Release.Namespace $ctx.Values.cluster.domain -}}
{{- end -}}

{{/* The ring replicas' URLs in id order, as a JSON list: replica i is the pod
`<ring>-i`, reached by its own name under the headless Service (a Raft peer must reach
one replica, not whichever the Service name resolves to). */}}
{{- define "dynamo.ringReplicaURLs" -}}
{{- $ring := include "dynamo.ringService" . -}}
{{- $host := include "dynamo.serviceHost" (list . $ring) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.ring.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s:%d" (include "dynamo.scheme" $) $ring $i $host (int $.Values.ring.port)) -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}

{{/* DYNAMO_REPLICAS of every ring replica: `0=<url of pod 0>,1=<url of pod 1>,...`, the
same list for all of them (a replica's id is its pod's ordinal). */}}
{{- define "dynamo.ringReplicas" -}}
{{- $items := list -}}
{{- range $i, $url := include "dynamo.ringReplicaURLs" . | fromJsonArray -}}
{{- $items = append $items (printf "%d=%s" $i $url) -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/* DYNAMO_RING_URL of storage nodes and coordinators: every ring replica's URL,
comma-separated; they fail over from one to the next, and any replica answers reads and
forwards writes to its leader. */}}
{{- define "dynamo.ringURL" -}}
{{- include "dynamo.ringReplicaURLs" . | fromJsonArray | join "," -}}
{{- end -}}

{{/* Ring replicas a voluntary disruption may take at once: max(1, (replicas - 1) / 2),
which leaves a majority of the group up (a group of one has none to keep). */}}
{{- define "dynamo.ringMaxUnavailable" -}}
{{- max 1 (div (sub (int .Values.ring.replicas) 1) 2) -}}
{{- end -}}

{{- define "dynamo.coordinatorURL" -}}
{{- printf "%s://%s:%d" (include "dynamo.scheme" .) (include "dynamo.serviceHost" (list . (include "dynamo.coordinatorService" .))) (int .Values.coordinator.service.port) -}}
{{- end -}}

{{/* A storage node's address, for a pod name (or `$(POD_NAME)` in a container's env):
call with (list $ "pod-name"). */}}
{{- define "dynamo.storageAddress" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s://%s.%s:%d" (include "dynamo.scheme" $ctx) (index . 1) (include "dynamo.serviceHost" (list $ctx (include "dynamo.storageService" $ctx))) (int $ctx.Values.storage.port) -}}
{{- end -}}

{{/* The storage StatefulSets as JSON: [{"name": ..., "zone": ...}], one per zone, or one
without a zone. */}}
{{- define "dynamo.storageSets" -}}
{{- $base := include "dynamo.storageService" . -}}
{{- $sets := list -}}
{{- if .Values.storage.zones -}}
{{- range .Values.storage.zones -}}
{{- $sets = append $sets (dict "name" (printf "%s-%s" $base .) "zone" .) -}}
{{- end -}}
{{- else -}}
{{- $sets = append $sets (dict "name" $base "zone" "") -}}
{{- end -}}
{{- toJson $sets -}}
{{- end -}}

{{/* The nodes the join Job registers, in join order (zones interleaved, so the first
nodes already spread over zones), as `ID=ADDRESS[@ZONE]` arguments in a JSON list. */}}
{{- define "dynamo.joinNodes" -}}
{{- $sets := include "dynamo.storageSets" . | fromJsonArray -}}
{{- $nodes := list -}}
{{- range $i := until (int .Values.storage.replicas) -}}
{{- range $set := $sets -}}
{{- $pod := printf "%s-%d" $set.name $i -}}
{{- $spec := printf "%s=%s" $pod (include "dynamo.storageAddress" (list $ $pod)) -}}
{{- if $set.zone -}}
{{- $spec = printf "%s@%s" $spec $set.zone -}}
{{- end -}}
{{- $nodes = append $nodes $spec -}}
{{- end -}}
{{- end -}}
{{- toJson $nodes -}}
{{- end -}}

{{/* Secret names: the existing one, or the one the chart generates. Call with
(list $ "rootToken" "root-token"). */}}
{{- define "dynamo.secretName" -}}
{{- $ctx := index . 0 -}}
{{- $spec := index $ctx.Values.secrets (index . 1) -}}
{{- default (printf "%s-%s" (include "dynamo.fullname" $ctx) (index . 2)) $spec.existingSecret -}}
{{- end -}}

{{- define "dynamo.secretKey" -}}
{{- $ctx := index . 0 -}}
{{- $spec := index $ctx.Values.secrets (index . 1) -}}
{{- if $spec.existingSecret -}}{{- $spec.existingSecretKey -}}{{- else -}}{{- index . 2 -}}{{- end -}}
{{- end -}}

{{- define "dynamo.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "dynamo.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The secrets volume of a pod: a projected volume with one file per secret, named as
the secret (root-token, member-key, control-key, context-key). Call with
(list $ "rootToken" "memberKey" ...). */}}
{{- define "dynamo.secretsVolume" -}}
{{- $ctx := index . 0 -}}
{{- $files := dict "rootToken" "root-token" "memberKey" "member-key" "controlKey" "control-key" "contextKey" "context-key" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
{{- range $which := rest . }}
{{- $file := index $files $which }}
      - secret:
          name: {{ include "dynamo.secretName" (list $ctx $which $file) }}
          items:
            - key: {{ include "dynamo.secretKey" (list $ctx $which $file) }}
              path: {{ $file }}
{{- end }}
{{- if $ctx.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "dynamo.tlsSecretName" $ctx }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "dynamo.secretsMounts" -}}
- name: secrets
  mountPath: /etc/dynamo/secrets
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/dynamo/tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Environment every service shares: listening, logs, traces, TLS. Call with
(list $ port). */}}
{{- define "dynamo.commonEnv" -}}
{{- $ctx := index . 0 -}}
- name: DYNAMO_LISTEN
  value: {{ printf "0.0.0.0:%d" (int (index . 1)) | quote }}
- name: DYNAMO_LOG_JSON
  value: {{ $ctx.Values.cluster.logJson | quote }}
{{- with $ctx.Values.cluster.logFilter }}
- name: DYNAMO_LOG
  value: {{ . | quote }}
{{- end }}
{{- with $ctx.Values.cluster.otlpEndpoint }}
- name: DYNAMO_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: DYNAMO_MEMBER_KEY_FILE
  value: /etc/dynamo/secrets/member-key
{{- if $ctx.Values.tls.enabled }}
- name: DYNAMO_TLS_CERT_FILE
  value: /etc/dynamo/tls/tls.crt
- name: DYNAMO_TLS_KEY_FILE
  value: /etc/dynamo/tls/tls.key
- name: DYNAMO_TLS_CA_FILE
  value: /etc/dynamo/tls/ca.crt
{{- end }}
{{- end -}}

{{/* Probes of a service's port: liveness on /healthz, readiness on /readyz, and a
start-up allowance (a storage node replays its journal before it serves). Call with
(list $ startupSeconds). */}}
{{- define "dynamo.probes" -}}
{{- $ctx := index . 0 -}}
{{- $scheme := include "dynamo.probeScheme" $ctx -}}
startupProbe:
  httpGet:
    path: /healthz
    port: api
    scheme: {{ $scheme }}
  periodSeconds: 2
  failureThreshold: {{ div (int (index . 1)) 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: api
    scheme: {{ $scheme }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: api
    scheme: {{ $scheme }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* The pod-level settings every pod shares. */}}
{{- define "dynamo.podCommon" -}}
serviceAccountName: {{ include "dynamo.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Cross-field rules the schema cannot say; each failure names the values. */}}
{{- define "dynamo.validate" -}}
{{- $n := int .Values.cluster.replicas -}}
{{- if gt (int .Values.cluster.readQuorum) $n -}}
{{- fail (printf "cluster.readQuorum (%d) must not exceed cluster.replicas (%d)" (int .Values.cluster.readQuorum) $n) -}}
{{- end -}}
{{- if gt (int .Values.cluster.writeQuorum) $n -}}
{{- fail (printf "cluster.writeQuorum (%d) must not exceed cluster.replicas (%d)" (int .Values.cluster.writeQuorum) $n) -}}
{{- end -}}
{{- $zones := len .Values.storage.zones | max 1 -}}
{{- $nodes := mul (int .Values.storage.replicas) $zones -}}
{{- if lt (int $nodes) $n -}}
{{- fail (printf "storage: %d storage nodes cannot hold cluster.replicas = %d replicas of each key on distinct nodes; raise storage.replicas or lower cluster.replicas" (int $nodes) $n) -}}
{{- end -}}
{{- $quorum := max (int .Values.cluster.readQuorum) (int .Values.cluster.writeQuorum) -}}
{{- $spare := max 1 (sub $n $quorum) -}}
{{- if and .Values.storage.pdb.enabled (gt (int .Values.storage.pdb.maxUnavailable) (int $spare)) -}}
{{- fail (printf "storage.pdb.maxUnavailable (%d) would let an eviction take a quorum away: with N=%d, R=%d, W=%d at most %d storage node(s) may be down" (int .Values.storage.pdb.maxUnavailable) $n (int .Values.cluster.readQuorum) (int .Values.cluster.writeQuorum) (int $spare)) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- fail "tls.enabled: name a Secret in tls.existingSecret or set tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled -}}
{{- fail "tls: tls.existingSecret and tls.certManager.enabled exclude each other" -}}
{{- end -}}
{{- if and (or .Values.tls.existingSecret .Values.tls.certManager.enabled) (not .Values.tls.enabled) -}}
{{- fail "tls: tls.existingSecret or tls.certManager.enabled is set but tls.enabled is false" -}}
{{- end -}}
{{- if ne (len .Values.storage.zones) (len (uniq .Values.storage.zones)) -}}
{{- fail (printf "storage.zones lists a zone twice: %v" .Values.storage.zones) -}}
{{- end -}}
{{- /* A StatefulSet's name goes into its pods' controller-revision-hash label with 11
characters more (at most 63), and a storage pod's name is its node id (at most 63). */ -}}
{{- range $set := include "dynamo.storageSets" . | fromJsonArray -}}
{{- if gt (len $set.name) 52 -}}
{{- fail (printf "storage: the StatefulSet name %s is longer than 52 characters; shorten the release name, fullnameOverride or storage.zones" $set.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
